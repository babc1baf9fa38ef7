"""`stable-layers eval` (data/evaluation issue)."""

from __future__ import annotations

import typer


def evaluate() -> None:
    """Evaluate base vs fine-tuned on Crello / synthetic designs (not implemented yet)."""
    raise typer.Exit(2)
