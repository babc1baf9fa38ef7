"""`stable-layers train` and `stable-layers demo` (trainer issue).

`train` is also what every trainer pod runs (docs/internals.md "Entry points"): with
`--nproc-per-node N` and/or `NNODES` > 1 and not already inside a launched worker, it starts the
workers itself through torch.distributed.run (torchrun) with the same arguments, so a pod needs
no separate launcher command.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time (test runners swap it per invocation)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "openai")
"""Loggers kept at WARNING in the CLI's log: the judge client's per-request lines."""


def _setup_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    # The HTTP clients log every judge request at INFO: thousands of lines per run, burying ours.
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _error(msg: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one message, exit code 2."""
    from stable_layers.data import DataSourceError
    from stable_layers.policy import PolicyLoadError
    from stable_layers.reward import JudgeConfigError
    from stable_layers.spec import SpecError
    from stable_layers.storage import StorageError
    from stable_layers.trainer import CheckpointError, JudgeUnavailableError, TrainError

    return (
        SpecError,
        TrainError,
        DataSourceError,
        PolicyLoadError,
        CheckpointError,
        StorageError,
        JudgeUnavailableError,
        JudgeConfigError,
    )


def _world_wanted(nproc_per_node: int) -> tuple[int, int]:
    nnodes = int(os.environ.get("NNODES", "1") or 1)
    return nnodes, nproc_per_node


def _launch(nnodes: int, nproc: int) -> None:
    """Re-run this very command as nnodes × nproc workers under torch.distributed.run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = [
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        f"--node-rank={os.environ.get('NODE_RANK', '0')}",
        f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master-port={os.environ.get('MASTER_PORT', '29500')}",
        "--module",
        "stable_layers.cli",
        *sys.argv[1:],
    ]
    try:
        run(get_args_parser().parse_args(args))
    except ChildFailedError as err:
        typer.secho(f"training workers failed: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _callbacks(spec: Any, out: str, metrics_port: int | None, evaluate: bool = False) -> list[Any]:
    """Prometheus exporter, rollout recorder, `metrics.reportTo` trackers and (with --evaluate)
    checkpoint evaluation; rank 0 only: the loop calls callbacks there."""
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    from stable_layers.observability import (
        TrackerMissingError,
        exporter_from_spec,
        recorder_from_spec,
        trackers_from_spec,
    )
    from stable_layers.storage import open_store

    found = [exporter_from_spec(spec, port=metrics_port), recorder_from_spec(spec, open_store(out))]
    try:
        found += trackers_from_spec(spec, open_store(out))
    except TrackerMissingError as err:
        from rich.markup import escape

        raise _error(escape(str(err))) from None  # "[wandb]" is an extra's name, not rich markup
    if evaluate:
        from stable_layers.eval import PeriodicEvaluation

        found.append(PeriodicEvaluation(spec, out))
    return [cb for cb in found if cb is not None]


class ProgressLines:
    """A plain progress line every few optimizer steps, for when stderr is not a terminal (CI
    logs, `nohup`): the progress bar is off there and the run would otherwise print nothing
    between its first and last line. A training callback (rank 0)."""

    def __init__(self, total: int, every: int | None = None) -> None:
        self.total = total
        self.every = every or max(1, min(10, total // 20))
        self.started = time.monotonic()
        self.first_step: int | None = None

    def on_step(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        if self.first_step is None:
            self.first_step = step - 1  # a resumed run starts counting from its checkpoint
        if step % self.every and step != self.total:
            return
        per_step = (time.monotonic() - self.started) / max(1, step - self.first_step)
        eta = per_step * (self.total - step)
        loss = record.get("loss")
        print(
            f"step {step}/{self.total} · reward {record['reward_mean']:.4f} (std {record['reward_std']:.4f}) · "
            f"loss {loss if loss is None else format(loss, '+.3e')} · {per_step:.1f} s/step · "
            f"eta {int(eta // 3600)}h{int(eta % 3600 // 60):02d}m{int(eta % 60):02d}s",
            file=sys.stderr,
            flush=True,
        )

    def on_checkpoint(self, step: int, uri: str, seconds: float) -> None:
        print(f"checkpoint step {step} committed: {uri} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def _progress_lines(spec: Any, max_steps: int | None) -> list[Any]:
    if sys.stderr.isatty() or int(os.environ.get("RANK", "0")) != 0:
        return []
    return [ProgressLines(max_steps or spec.grpo.max_steps)]


def _check_output(out: str) -> None:
    """Fail in a second, before a model loads, when --out cannot be used (an S3 store without
    credentials, a missing bucket, an unwritable folder): one clear line instead of a failed
    run's error records to the same unreachable store."""
    from stable_layers.storage import open_store

    open_store(out).check()


def train(
    run_yaml: Annotated[
        Path,
        typer.Argument(
            help="Run spec (YAML/JSON), e.g. examples/local-run.yaml, or a StableLayersRun document "
            "(manifests/examples/run-tiny.yaml): its spec.run is trained."
        ),
    ],
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Run directory or URI (s3://bucket/prefix): checkpoints, metrics.jsonl, progress.json. "
            "Default for a StableLayersRun document: its spec.storage.uri.",
        ),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop after N optimizer steps (default: grpo.maxSteps).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from the newest committed checkpoint under --out (fresh start if none)."
        ),
    ] = False,
    nproc_per_node: Annotated[
        int, typer.Option("--nproc-per-node", min=1, help="Worker processes on this node (one per GPU).")
    ] = 1,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port (rank 0).")
    ] = None,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate",
            help="Evaluate committed checkpoints in this process per eval.everySteps / eval.data "
            "(local runs; on a cluster the operator runs evaluation Jobs instead).",
        ),
    ] = False,
    no_overlap: Annotated[
        bool, typer.Option("--no-overlap", help="Score each group before sampling the next (no background scoring).")
    ] = False,
) -> None:
    """Run Flow-GRPO training from a run spec."""
    from stable_layers.spec import SpecError, load_run_file

    _setup_logging()
    try:  # before any torch import: a typo in the spec is reported in well under a second
        spec, default_out = load_run_file(run_yaml)
    except SpecError as err:
        raise _error(str(err)) from None
    out = out or default_out
    if not out:
        raise _error(f"{run_yaml}: no --out given; pass --out DIR_OR_URI (where checkpoints and metrics go)")
    from stable_layers.trainer import is_launched_worker

    errors = _user_errors()
    if int(os.environ.get("RANK", "0")) == 0:
        try:
            _check_output(out)
        except errors as err:
            raise _error(str(err)) from None
    nnodes, nproc = _world_wanted(nproc_per_node)
    if nnodes * nproc > 1 and not is_launched_worker():
        _launch(nnodes, nproc)
        return
    from stable_layers.trainer import train as run_training

    try:
        record = run_training(
            spec,
            out,
            max_steps=max_steps,
            resume=resume,
            callbacks=[*_callbacks(spec, out, metrics_port, evaluate), *_progress_lines(spec, max_steps)],
            overlap_scoring=spec.reward.overlap and not no_overlap,
            show_progress=sys.stderr.isatty(),
        )
    except errors as err:
        raise _error(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0 and record:
        typer.echo(f"done: step {record['step']}, reward mean {record['reward_mean']:.4f}; run in {out}")


def _join(out: str, key: str) -> str:
    return f"{out.rstrip('/')}/{key}" if "://" in out else str(Path(out) / key)


def _read_report(report_uri: str) -> dict[str, Any]:
    """report.json as written (what the demo prints is what the file says)."""
    import json

    from stable_layers import storage

    if "://" in report_uri:
        return json.loads(storage.open_store(report_uri).get_bytes("report.json"))
    return json.loads((Path(report_uri) / "report.json").read_text())


def print_changes(report: dict[str, Any]) -> None:
    """The headline base → fine-tuned changes of a report, each with its 95% interval and
    verdict, then in words which of them did not improve."""
    from rich.console import Console
    from rich.table import Table

    rows = report["summary"].get("changes") or []
    console = Console()
    if not console.is_terminal:  # logs and pipes: rich's 80-column default would fold every cell
        console = Console(width=150)
    if not rows:
        console.print("no base → fine-tuned comparison in the report")
        return
    table = Table(title="fine-tuned − base on held-out designs (paired bootstrap 95% CI)")
    for col in ("statistic", "base", "fine-tuned", "difference", "95% CI", "designs", "verdict"):
        table.add_column(col, justify="left" if col in ("statistic", "verdict") else "right")
    style = {"improved": "green", "worse": "red"}

    def num(x: float | None) -> str:
        return "–" if x is None else f"{x:.4f}"

    for r in rows:
        ci = f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if r["ci"] else "–"
        arrow = "↓" if r["lowerIsBetter"] else "↑"
        diff = "–" if r["diff"] is None else f"{r['diff']:+.4f}"
        verdict = f"[{style[r['verdict']]}]{r['verdict']}[/]" if r["verdict"] in style else r["verdict"]
        table.add_row(
            f"{r['label']} {arrow}", num(r["base"]), num(r["finetuned"]), diff, ci, str(r["designs"]), verdict
        )
    console.print(table)
    improved = [r["label"] for r in rows if r["verdict"] == "improved"]
    not_improved = [r["label"] for r in rows if r["verdict"] != "improved"]
    console.print(f"improved: {'; '.join(improved) or 'nothing'}", highlight=False, soft_wrap=True)
    console.print(f"did not improve: {'; '.join(not_improved) or 'nothing'}", highlight=False, soft_wrap=True)


def demo(
    out: Annotated[str, typer.Option("--out", help="Where the demo run and its report go.")] = "runs/demo",
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Optimizer steps (default: the spec's grpo.maxSteps).")
    ] = None,
    eval_limit: Annotated[
        int | None,
        typer.Option("--eval-limit", min=1, help="Held-out designs in the report (default: eval.heldoutDesigns)."),
    ] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", help="Run spec to use instead of the shipped demo-run.yaml."),
    ] = None,
) -> None:
    """Fine-tune the tiny model with Flow-GRPO (the shipped demo-run.yaml), then evaluate base vs fine-tuned on
    held-out designs and print the changes with their bootstrap intervals."""
    import time

    import torch

    from stable_layers import storage
    from stable_layers.policy import TINY_ASSETS, tiny_installed
    from stable_layers.spec import SpecError, example_run_path, load_run_spec
    from stable_layers.trainer import train as run_training

    _setup_logging()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        spec = load_run_spec(spec_file or example_run_path("demo-run"))
    except SpecError as err:
        raise _error(str(err)) from None
    if spec.model.preset == "tiny" and not tiny_installed():
        # Without the trained weights the demo still exercises every step, but a random model has
        # nothing to improve: say so rather than present its numbers as a result.
        typer.secho(
            f"the tiny model is not installed at {TINY_ASSETS}; running on tiny-random, which shows plumbing, "
            "not learning (stable-layers pretrain-tiny creates it)",
            fg=typer.colors.YELLOW,
            err=True,
        )
        spec.model.preset = "tiny-random"
    model = spec.model.preset or spec.model.base
    typer.echo(f"demo: training {model} for {steps or spec.grpo.max_steps} steps into {out}")
    errors = _user_errors()
    t0 = time.monotonic()
    try:
        record = run_training(
            spec,
            out,
            max_steps=steps,
            resume=True,
            callbacks=_progress_lines(spec, steps),
            show_progress=sys.stderr.isatty(),
        )
    except errors as err:
        raise _error(str(err)) from None
    train_s = time.monotonic() - t0
    step = storage.latest_committed(storage.open_store(out))
    typer.echo(
        f"trained: step {record.get('step', step)}, reward mean {record.get('reward_mean', float('nan')):.4f} "
        f"({train_s:.0f} s)"
    )
    ckpt = _join(out, storage.checkpoint_key(step)) if step is not None else None
    from stable_layers.eval import run_evaluation

    report_uri = _join(out, f"{storage.EVAL}/{storage.step_name(step or 0)}")
    t1 = time.monotonic()
    try:
        run_evaluation(spec, "synthetic:heldout", report_uri, checkpoint=ckpt, limit=eval_limit)
    except errors as err:
        raise _error(str(err)) from None
    eval_s = time.monotonic() - t1
    print_changes(_read_report(report_uri))
    typer.echo(f"report: {report_uri}/report.html (training {train_s:.0f} s, evaluation {eval_s:.0f} s)")
