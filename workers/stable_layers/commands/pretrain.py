"""`stable-layers pretrain-tiny` (tiny trained model issue)."""

from __future__ import annotations

import typer


def pretrain_tiny() -> None:
    """Train the tiny layer-decomposition model from scratch (not implemented yet)."""
    raise typer.Exit(2)
