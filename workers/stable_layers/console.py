"""The one progress-bar layout of the CLI's long-running commands (train, pretrain-tiny)."""

from __future__ import annotations

from typing import Any


def step_progress(info: str, *, label: str = "[bold]{task.description:<12}", console: Any = None) -> Any:
    """A rich `Progress` with: label, bar, done/total, `info` (a `TextColumn` format over the task's
    fields), elapsed and remaining time. rich is imported here so importing callers stays cheap."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(info),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
