"""Training and evaluation image sources."""
