"""Kubernetes operator (kopf) for `StableLayersRun` resources (stablelayers.io/v1alpha1)."""

__version__ = "0.1.0"
