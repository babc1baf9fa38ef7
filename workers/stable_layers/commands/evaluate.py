"""`stable-layers eval` (data/evaluation issue): base vs fine-tuned on Crello or held-out synthetic
designs, writing report.json and a self-contained report.html. The operator's evaluation Job runs
exactly this command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    run_yaml: Annotated[Path, typer.Argument(help="Run spec (YAML/JSON); its model, sampler and eval sections apply.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="crello:PATH (save_to_disk folder or Parquet shards), crello:hub, or synthetic:heldout. Default: eval.data of the spec.",
        ),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", help="Output directory or store URI (s3://bucket/prefix/eval/step-N).")
    ] = "eval-report",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="Fine-tuned checkpoint: s3://…/checkpoints/step-N, a committed step folder, or a LoRA folder.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Evaluate at most N designs (default: eval.limit).")
    ] = None,
) -> None:
    """Evaluate the base model (and the fine-tuned adapter with --checkpoint) and write the report."""
    from rich.console import Console

    from stable_layers.spec import SpecError, load_run_spec

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = load_run_spec(run_yaml)
    except SpecError as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    data = data or spec.eval.data
    if not data:
        console.print(
            "[red]error:[/red] no evaluation data: pass --data crello:PATH or synthetic:heldout (or set eval.data)"
        )
        raise typer.Exit(2)

    from stable_layers.data import CrelloError
    from stable_layers.eval import EvalDataError, run_evaluation

    try:
        report = run_evaluation(spec, data, out, checkpoint=checkpoint, limit=limit)
    except (EvalDataError, CrelloError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None
    _print_summary(console, report, out)


def _print_summary(console: object, report: dict, out: str) -> None:
    from rich.table import Table

    proto = report.get("protocol", {})
    label = proto.get("name", "?") + (" (with differences, see notes)" if proto.get("differences") else "")
    table = Table(title=f"{report['dataset']['designs']} designs · protocol {label} · report in {out}")
    models = list(report["summary"]["models"])
    table.add_column("metric")
    for m in models:
        table.add_column(m, justify="right")
    rows = [("LayerD RGB L1 k=0", "layerd", 0, "rgb_l1"), ("LayerD IoU k=0", "layerd", 0, "alpha_iou")]
    k_last = report["settings"]["maxEdits"]
    rows += [
        (f"LayerD RGB L1 k={k_last}", "layerd", k_last, "rgb_l1"),
        (f"LayerD IoU k={k_last}", "layerd", k_last, "alpha_iou"),
    ]
    for label, _, k, key in rows:
        vals = []
        for m in models:
            levels = report["summary"]["models"][m]["layerd"]
            vals.append(f"{levels[k][key]:.4f}" if levels else "–")
        table.add_row(label, *vals)
    for key in ("blank_layer_rate", "composite_duplicate_rate", "degenerate_bg", "artifact_layer_rate", "recon_psnr"):
        vals = [report["summary"]["models"][m]["metrics"].get(key) for m in models]
        table.add_row(key, *[f"{v:.4f}" if isinstance(v, float) else "–" for v in vals])
    console.print(table)  # type: ignore[attr-defined]
