"""`stable-layers score` and `stable-layers judge-check` (reward issue)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from stable_layers.spec import RewardSpec

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Run spec (YAML) whose `reward` section to use; flags override it.")
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint", help="OpenAI-compatible base URL, e.g. http://judge:8000/v1 (implies the openai backend)."
    ),
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Judge model name (openai) or id/path (transformers).")]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="pixel | openai | transformers (default: the config's, else pixel).")
]
NoGridOpt = Annotated[bool, typer.Option("--no-grid", help="Skip stage 2 (grid calibration).")]


def resolve_reward_spec(
    config: Path | None, endpoint: str | None, model: str | None, backend: str | None, no_grid: bool
) -> RewardSpec:
    """The reward spec of a CLI call: the config's `reward` section, then the flags on top."""
    from stable_layers.spec import RewardSpec, load_run_spec

    spec = load_run_spec(config).reward if config else RewardSpec()
    if backend is not None and backend not in ("pixel", "openai", "transformers"):
        raise typer.BadParameter(
            f"unknown backend {backend!r}; use pixel, openai or transformers", param_hint="--backend"
        )
    if endpoint and backend not in (None, "openai"):
        raise typer.BadParameter(
            "--endpoint needs the openai backend; drop --backend or use --backend openai", param_hint="--endpoint"
        )
    kind = backend or ("openai" if endpoint else spec.kind)
    spec.kind = kind  # type: ignore[assignment]
    if endpoint:
        spec.openai.base_url = endpoint
    if model:
        if kind == "openai":
            spec.openai.model = model
        elif kind == "transformers":
            spec.transformers.model = model
        else:
            raise typer.BadParameter("--model applies to the openai or transformers backend", param_hint="--model")
    if no_grid:
        spec.grid = False
    return spec


def _fail(msg: str, code: int = 1) -> typer.Exit:
    typer.secho(msg, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _run_judge(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a scoring coroutine; a judge that rejects the configuration ends in one line, exit 2."""
    from stable_layers.reward import JudgeConfigError

    try:
        return asyncio.run(main())
    except JudgeConfigError as err:
        raise _fail(str(err), code=2) from None


def score(
    group_dir: Annotated[Path, typer.Argument(help="Folder with input.png and cand-*/layer-*.png (back to front).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write scores.json.")],
    endpoint: EndpointOpt = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    no_grid: NoGridOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Score one group of candidate decompositions; writes per-candidate criteria, stage-1/2 and
    combined rewards, and the group's spread per stage."""
    from rich.console import Console
    from rich.table import Table

    from stable_layers.reward import build_scorer, load_group, scores_document, write_json_atomic
    from stable_layers.spec import SpecError

    try:
        spec = resolve_reward_spec(config, endpoint, model, backend, no_grid)
        group, names = load_group(group_dir)
    except (SpecError, OSError) as err:
        raise _fail(str(err), code=2) from None

    async def run() -> Any:
        scorer = build_scorer(spec)
        try:
            return await scorer.score_group(group), scorer.name
        finally:
            await scorer.aclose()

    result, name = _run_judge(run)
    if result.stats.get("requests") and result.stats.get("requests_error") == result.stats.get("requests"):
        raise _fail(f"every judge request failed; is the judge at {spec.openai.base_url} up? (GET /health)")
    doc = scores_document(result, names, name)
    write_json_atomic(out, doc)

    table = Table(title=f"{group.image_id}: {name}")
    for col in (
        "candidate",
        "reward",
        "stage 1",
        "stage 2",
        *(c.split("_")[0] for c in result.scores[0].criteria),
        "flags",
    ):
        table.add_column(col)
    for cand in doc["candidates"]:
        flags = ",".join(k for k, v in cand["flags"].items() if v)
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(
            cand["name"],
            fmt(cand["reward"]),
            fmt(cand["stage1"]),
            fmt(cand["stage2"]),
            *(fmt(v) for v in cand["criteria"].values()),
            flags,
        )
    console = Console()
    console.print(table)
    for stage, sp in doc["spread"].items():
        console.print(f"{stage}: std {sp['std']:.3f}, range {sp['range']:.3f}")
    console.print(f"wrote {out}")


def judge_check(
    endpoint: EndpointOpt = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    no_grid: NoGridOpt = False,
    config: ConfigOpt = None,
    groups: Annotated[int, typer.Option(help="Designs; each gives one group per ladder (7 and 5 candidates).")] = 4,
    repeats: Annotated[int, typer.Option(help="Times each group is scored (test-retest).")] = 2,
    size: Annotated[int, typer.Option(help="Design size in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="First design seed.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Write the report as JSON here.")] = None,
    min_spearman: Annotated[
        float,
        typer.Option(help="Exit 1 when the mean Spearman of the judge's own score (no penalties) is below this."),
    ] = 0.6,
    min_spread: Annotated[
        float, typer.Option(help="Exit 1 when the judge's mean within-group std is below this.")
    ] = 0.02,
) -> None:
    """Run a judge over the synthetic ladders: rank agreement (Spearman), within-group spread and
    test-retest variance per stage. The gate uses the judge's own combined score, without the
    deterministic pixel penalties (they alone order much of the ladders)."""
    from rich.console import Console
    from rich.table import Table

    from stable_layers.reward import build_scorer, gate, write_json_atomic
    from stable_layers.reward import judge_check as run_check
    from stable_layers.spec import SpecError

    try:
        spec = resolve_reward_spec(config, endpoint, model, backend, no_grid)
    except SpecError as err:
        raise _fail(str(err), code=2) from None

    async def run() -> dict[str, Any]:
        scorer = build_scorer(spec)
        try:
            return await run_check(scorer, groups=groups, size=size, repeats=repeats, seed=seed)
        finally:
            await scorer.aclose()

    report = _run_judge(run)
    reasons = gate(report, min_spearman, min_spread)
    report["gate"] = {"min_spearman": min_spearman, "min_spread": min_spread, "passed": not reasons, "reasons": reasons}
    console = Console()
    table = Table(title=f"judge-check: {report['scorer']} ({groups} designs × 2 ladders × {repeats} repeats)")
    for col in ("stage", "spearman mean", "spearman min", "group std", "retest var"):
        table.add_column(col)
    for stage, rho in report["spearman"].items():
        label = "reward (with penalties)" if stage == "reward" else stage
        table.add_row(
            label,
            f"{rho['mean']:.3f}",
            f"{rho['min']:.3f}",
            f"{report['group_std'].get(stage, 0.0):.3f}",
            f"{report['retest_var'].get(stage, 0.0):.5f}",
        )
    console.print(table)
    for kind, rows in report["per_level"].items():
        levels = Table(title=f"mean per rung: {kind} ladder")
        for col in ("rung", "judge", "reward"):
            levels.add_column(col)
        for lv, vals in rows.items():
            levels.add_row(lv, f"{vals.get('judge', float('nan')):.3f}", f"{vals.get('reward', float('nan')):.3f}")
        console.print(levels)
    console.print(f"failures: {report['failures']}")
    if out:
        write_json_atomic(out, report)
        console.print(f"wrote {out}")
    if reasons:
        raise _fail("judge-check gate failed: " + "; ".join(reasons))
    console.print("judge-check gate passed")
