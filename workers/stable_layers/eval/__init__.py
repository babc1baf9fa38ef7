"""Evaluation: the LayerD protocol on Crello and the Stable-Layers layer-quality metrics."""
