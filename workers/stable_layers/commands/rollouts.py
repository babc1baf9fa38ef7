"""`stable-layers rollouts`: the HTML viewer of a run's rollout records (observability issue)."""

from __future__ import annotations

from typing import Annotated

import typer


def rollouts(
    run_uri: Annotated[
        str, typer.Argument(help="Run directory or URI (s3://bucket/prefix): the trainer's --out.", metavar="RUN_URI")
    ],
    out: Annotated[str, typer.Option("--out", help="Directory (or store URI) for index.html and the per-step pages.")],
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="Steps to show: N, A:B, A: or :B, comma separated (e.g. 0:10,50). Default all."),
    ] = None,
    per_page: Annotated[
        int, typer.Option("--per-page", min=1, help="Groups per page (a step with more groups gets several pages).")
    ] = 10,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Render every step page again (default: keep unchanged ones).")
    ] = False,
) -> None:
    """Build self-contained HTML pages of the sampled rollouts: each group's candidates, the judge's
    answers per stage, rewards and advantages; an index with the within-group spread over steps."""
    from rich.console import Console

    from stable_layers.observability import NoRecordsError, StepsError, build_viewer
    from stable_layers.storage import StorageError

    err_console = Console(stderr=True)
    try:
        result = build_viewer(run_uri, out, steps=steps, per_page=per_page, rebuild=rebuild)
    except (NoRecordsError, StepsError, StorageError) as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    kept = len(result.pages) - len(result.rendered)
    note = f" ({kept} unchanged, kept)" if kept else ""
    typer.echo(f"{result.steps} steps, {result.groups} groups, {len(result.pages)} pages{note}: {result.index}")
