"""`stable-layers train` and `stable-layers demo` (trainer issue)."""

from __future__ import annotations

import typer


def train() -> None:
    """Run Flow-GRPO training from a run spec (not implemented yet)."""
    raise typer.Exit(2)


def demo() -> None:
    """Local training run on the tiny model, then its evaluation report (not implemented yet)."""
    raise typer.Exit(2)
