"""Reading rollout records back for the viewer (`stable-layers rollouts`): which steps and groups a
run holds, their `scores.json`, and what a page shows about one group.

Pure functions over the record dicts, plus the few store reads: the listing, one `scores.json` per
group, and a group's PNGs only when its page is rendered, so a long run is never held in memory.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stable_layers.storage import ROLLOUTS, Store, step_name

ZERO_SPREAD = 1e-6
"""A group whose rewards differ by no more than this has no GRPO signal (the trainer's
`zero_std_ratio` counts exactly equal rewards; the records are rounded floats, hence a tolerance)."""
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_READERS = 8
"""Concurrent `scores.json` reads: S3 latency, not bandwidth, bounds a listing of many groups."""


class StepsError(ValueError):
    """A `--steps` selection that cannot be parsed."""


def parse_steps(text: str | None) -> list[tuple[int, int | None]]:
    """`"3,10:20,40:"` → inclusive ranges [(3, 3), (10, 20), (40, None)]; empty or None = all."""
    if text is None or not text.strip():
        return [(0, None)]
    out: list[tuple[int, int | None]] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d*)\s*(:?)\s*(\d*)", part)
        if not part or m is None or (not m.group(2) and not m.group(1)):
            raise StepsError(f"--steps: cannot read {part!r}; use N, A:B, A: or :B separated by commas (e.g. 0:10,50)")
        lo = int(m.group(1)) if m.group(1) else 0
        hi = (int(m.group(3)) if m.group(3) else None) if m.group(2) else lo
        if hi is not None and hi < lo:
            raise StepsError(f"--steps: range {part!r} ends before it starts")
        out.append((lo, hi))
    return out


def in_steps(step: int, ranges: Iterable[tuple[int, int | None]]) -> bool:
    return any(lo <= step and (hi is None or step <= hi) for lo, hi in ranges)


def list_groups(store: Store) -> dict[int, list[str]]:
    """step → key prefixes of its complete records (those with `scores.json`), sorted."""
    out: dict[int, list[str]] = {}
    for key in store.list(f"{ROLLOUTS}/"):
        parts = key.split("/")
        if len(parts) != 4 or parts[3] != "scores.json":
            continue
        m = _STEP_DIR.match(parts[1])
        if m:
            out.setdefault(int(m.group(1)), []).append("/".join(parts[:3]))
    return {s: sorted(v) for s, v in sorted(out.items())}


def read_scores(store: Store, bases: list[str]) -> list[dict[str, Any]]:
    """The `scores.json` of each record prefix, in order (read concurrently)."""
    if not bases:
        return []
    with ThreadPoolExecutor(max_workers=min(_READERS, len(bases))) as pool:
        return list(pool.map(lambda b: json.loads(store.get_bytes(f"{b}/scores.json")), bases))


def image_keys(base: str, body: dict[str, Any]) -> tuple[str, list[list[str]]]:
    """Keys of the input and of every candidate's layers (the layout rollouts.py writes)."""
    n, layers = int(body.get("groupSize", len(body.get("candidates", [])))), int(body.get("layers", 0))
    cands = [[f"{base}/cand-{c:02d}/layer-{k:02d}.png" for k in range(layers)] for c in range(n)]
    return f"{base}/input.png", cands


def _pstdev(values: list[float]) -> float | None:
    return statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)


@dataclass
class GridRepeat:
    """One stage-2 request: the candidate shown at each printed position and the score it got."""

    shown: list[int]
    """shown[pos] = candidate index printed as number pos + 1 (the shuffled order)."""
    scores: list[float | None]
    """scores[pos] = the judge's score for that printed number (None when the answer was unusable)."""
    answers: list[str]


@dataclass
class GroupView:
    """What the viewer shows about one recorded group, derived from its `scores.json`."""

    step: int
    image_id: str
    base: str
    candidates: list[dict[str, Any]]
    stats: dict[str, Any]
    spread: dict[str, float | None]
    """Population std within the group: `reward`, stage `1`, stage `2`."""
    zero_spread: bool
    layers: int = 0
    grid: list[GridRepeat] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Parse failures, transport errors and fallbacks, in words."""


def grid_repeats(candidates: list[dict[str, Any]]) -> list[GridRepeat]:
    """Rebuild each grid request's shuffled order from the per-candidate `raw.stage2` entries (the
    reward stores, for every candidate and repeat, the number it was printed under)."""
    per_cand = [c.get("raw", {}).get("stage2") or [] for c in candidates]
    n_rep = max((len(p) for p in per_cand), default=0)
    out = []
    for r in range(n_rep):
        slots: dict[int, tuple[int, float | None, list[str]]] = {}
        for ci, entries in enumerate(per_cand):
            if r < len(entries):
                e = entries[r]
                slots[int(e["index"]) - 1] = (ci, e.get("score"), list(e.get("answers") or []))
        positions = sorted(slots)
        answers = next((slots[p][2] for p in positions if slots[p][2]), [])
        out.append(GridRepeat([slots[p][0] for p in positions], [slots[p][1] for p in positions], answers))
    return out


def _answers_failed(answers: list[str]) -> tuple[int, int]:
    """(transport errors, unusable answers) among one request's recorded attempts."""
    errors = sum(1 for a in answers if a.startswith("<error:"))
    return errors, len(answers) - errors


def problems(candidates: list[dict[str, Any]], stats: dict[str, Any], grid: list[GridRepeat]) -> list[str]:
    out = []
    for c in candidates:
        raw = c.get("raw", {})
        answers = raw.get("stage1_answers") or []
        errors, texts = _answers_failed(answers)
        parsed = "stage1_scores" in raw
        if errors:
            out.append(f"candidate {c['index']}: the judge request failed ({answers[-1][:120]})")
        bad_texts = texts - (1 if parsed else 0)
        if bad_texts > 0:
            what = "re-asked, then parsed" if parsed else "unusable after the re-ask"
            out.append(f"candidate {c['index']}: {bad_texts} unparsable stage-1 answer(s), {what}")
        if c.get("flags", {}).get("judge_failed"):
            out.append(f"candidate {c['index']}: stage-1 fallback (judge part = mean of the scored candidates)")
    for r, rep in enumerate(grid):
        if rep.scores and all(s is None for s in rep.scores):
            out.append(f"grid request {r + 1}: no usable answer")
    if stats.get("stage2_failed"):
        out.append("stage 2 failed for the group: reward from stage 1 alone")
    return out


def group_view(base: str, body: dict[str, Any]) -> GroupView:
    cands = list(body.get("candidates", []))
    stats = dict(body.get("stats") or {})
    rewards = [float(c["reward"]) for c in cands if c.get("reward") is not None]
    spread: dict[str, float | None] = {"reward": _pstdev(rewards)}
    for stage in ("1", "2"):
        vals = [float(c["stages"][stage]) for c in cands if c.get("stages", {}).get(stage) is not None]
        spread[stage] = _pstdev(vals)
    grid = grid_repeats(cands)
    zero = bool(rewards) and max(rewards) - min(rewards) <= ZERO_SPREAD
    return GroupView(
        step=int(body.get("step", 0)),
        image_id=str(body.get("imageId", base.rsplit("/", 1)[-1])),
        base=base,
        candidates=cands,
        stats=stats,
        spread=spread,
        zero_spread=zero,
        layers=int(body.get("layers", 0)),
        grid=grid,
        problems=problems(cands, stats, grid),
    )


@dataclass
class StepSummary:
    step: int
    groups: int
    zero_spread: int
    spread: dict[str, float | None]
    """Mean over the step's recorded groups of the within-group std (`reward`, `1`, `2`)."""
    reward_mean: float | None
    problems: int


def summarize(step: int, views: list[GroupView]) -> StepSummary:
    def mean(key: str) -> float | None:
        vals = [v.spread[key] for v in views if v.spread.get(key) is not None]
        return statistics.fmean(vals) if vals else None  # type: ignore[arg-type]

    rewards = [float(c["reward"]) for v in views for c in v.candidates if c.get("reward") is not None]
    return StepSummary(
        step=step,
        groups=len(views),
        zero_spread=sum(v.zero_spread for v in views),
        spread={k: mean(k) for k in ("reward", "1", "2")},
        reward_mean=statistics.fmean(rewards) if rewards else None,
        problems=sum(len(v.problems) for v in views),
    )


def page_name(step: int, page: int = 1) -> str:
    """File name of one step's page (`page` counts from 1)."""
    return f"{step_name(step)}.html" if page == 1 else f"{step_name(step)}-p{page}.html"
