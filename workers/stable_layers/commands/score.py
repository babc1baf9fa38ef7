"""`stable-layers score` and `stable-layers judge-check` (reward issue)."""

from __future__ import annotations

import typer


def score() -> None:
    """Score one group of candidate decompositions (not implemented yet)."""
    raise typer.Exit(2)


def judge_check() -> None:
    """Check a judge on a synthetic defect ladder (not implemented yet)."""
    raise typer.Exit(2)
