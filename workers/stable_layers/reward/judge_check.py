"""`judge-check`: how well a judge ranks the ladders, how much it spreads, how stable it is.

For each of `groups` designs, both ladders of `ladder.py` (the defect ladder, 7 rungs, and the
separation ladder, 5 rungs; known order, shuffled before scoring) are scored `repeats` times.
Reported per stage:
  spearman.<stage>     mean and min over groups of Spearman's ρ between the stage's score and the
                       known quality (1 = perfect order)
  group_std.<stage>    mean within-group std (a judge that squeezes scores into a narrow band
                       shows a small stage-1 std — the paper's motivation for stage 2)
  retest_var.<stage>   mean over candidates of the variance of its score across repeats
Stages: stage1, stage2, judge (λ·stage1 + (1−λ)·stage2: the judge's own combined score, before
the deterministic pixel penalties) and reward (what GRPO sees, penalties included).

The gate (`gate`) looks at the judge's own numbers only. The penalties alone order much of the
ladders (a duplicated composite, a recomposition error), so a judge that knows nothing still gets a
high *reward* Spearman; gating on the reward would pass it.
  per_level            mean reward and criteria per ladder and rung (which defects the judge sees)
  failures             parse failures, transport errors and fallbacks summed over all queries
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np

from stable_layers.reward.base import Candidate, Group, GroupScore, RewardScorer
from stable_layers.reward.ladder import LADDERS, make_ladder
from stable_layers.spec import CRITERIA

STAGES = {"judge": "judge", "stage1": "1", "stage2": "2", "reward": None}
JUDGE_STAGE = "judge"
COUNTERS = (
    "requests",
    "requests_parse_error",
    "requests_error",
    "requests_truncated",
    "reasks",
    "retries",
    "stage1_fallbacks",
    "stage2_failed",
)


def _stage_values(score: GroupScore, stage: str) -> list[float | None]:
    key = STAGES[stage]
    if key is None:
        return [s.reward for s in score.scores]
    return [s.stages.get(key) for s in score.scores]


def _spearman(values: list[float | None], quality: list[int]) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(v, q) for v, q in zip(values, quality, strict=True) if v is not None]
    if len(pairs) < 3 or len({v for v, _ in pairs}) < 2:
        return 0.0 if len(pairs) >= 3 else None  # a constant judge ranks nothing
    return float(spearmanr([v for v, _ in pairs], [q for _, q in pairs]).statistic)


def ladder_groups(groups: int, size: int, seed: int) -> list[tuple[str, Group, list[int]]]:
    """(ladder name, shuffled group, rung index of each candidate): both ladders of `groups`
    designs starting at `seed`."""
    out = []
    for g in range(groups):
        for li, kind in enumerate(LADDERS):
            design_id, image, rungs = make_ladder(seed + g, size, kind)  # type: ignore[arg-type]
            order = list(range(len(rungs)))
            random.Random(seed * 1000 + g + 500 * li).shuffle(order)
            group = Group(f"ladder-{kind}-{design_id}", image, [Candidate(rungs[k]) for k in order])
            out.append((kind, group, order))
    return out


def gate(report: dict[str, Any], min_spearman: float, min_spread: float) -> list[str]:
    """Reasons the judge fails the gate (empty: it passes), from the judge's own combined score."""
    rho = report["spearman"].get(JUDGE_STAGE)
    spread = report["group_std"].get(JUDGE_STAGE, 0.0)
    reasons = []
    if rho is None:
        reasons.append("the judge scored no candidate (every answer failed)")
    elif rho["mean"] < min_spearman:
        reasons.append(f"judge score Spearman {rho['mean']:.3f} is below {min_spearman} (without the pixel penalties)")
    if rho is not None and spread < min_spread:
        reasons.append(
            f"judge score within-group std {spread:.4f} is below {min_spread}: it does not tell candidates apart"
        )
    return reasons


async def judge_check(
    scorer: RewardScorer, *, groups: int = 4, size: int = 128, repeats: int = 2, seed: int = 0
) -> dict[str, Any]:
    if groups < 1 or repeats < 1:
        raise ValueError("groups and repeats must be >= 1")
    data = ladder_groups(groups, size, seed)
    rho: dict[str, list[float]] = defaultdict(list)
    std: dict[str, list[float]] = defaultdict(list)
    retest: dict[str, list[float]] = defaultdict(list)
    per_level: dict[str, dict[str, dict[str, list[float]]]] = {
        kind: {lv: defaultdict(list) for lv in levels} for kind, levels in LADDERS.items()
    }
    failures: dict[str, float] = defaultdict(float)
    for kind, group, rungs in data:
        quality = [-k for k in rungs]  # rung 0 is best
        levels = LADDERS[kind]
        runs = [await scorer.score_group(group) for _ in range(repeats)]
        for run in runs:
            for key in COUNTERS:
                failures[key] += float(run.stats.get(key, 0.0))
            for stage in STAGES:
                vals = _stage_values(run, stage)
                r = _spearman(vals, quality)
                if r is not None:
                    rho[stage].append(r)
                present = [v for v in vals if v is not None]
                if len(present) > 1:
                    std[stage].append(float(np.std(present)))
            for k, s in zip(rungs, run.scores, strict=True):
                cell = per_level[kind][levels[k]]
                cell["reward"].append(s.reward)
                if JUDGE_STAGE in s.stages:
                    cell[JUDGE_STAGE].append(s.stages[JUDGE_STAGE])
                for c in CRITERIA:
                    if c in s.criteria:
                        cell[c].append(s.criteria[c])
        if repeats > 1:
            for stage in STAGES:
                table = [_stage_values(run, stage) for run in runs]
                for i in range(len(group.candidates)):
                    col = [row[i] for row in table if row[i] is not None]
                    if len(col) == repeats:
                        retest[stage].append(float(np.var(col)))

    def summary(d: dict[str, list[float]], how: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage, vals in d.items():
            out[stage] = (
                {"mean": float(np.mean(vals)), "min": float(np.min(vals))} if how == "rho" else float(np.mean(vals))
            )
        return out

    return {
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "groups": groups,
        "repeats": repeats,
        "size": size,
        "levels": {kind: list(levels) for kind, levels in LADDERS.items()},
        "spearman": summary(rho, "rho"),
        "group_std": summary(std, "mean"),
        "retest_var": summary(retest, "mean"),
        "per_level": {
            kind: {lv: {k: float(np.mean(v)) for k, v in d.items()} for lv, d in rows.items()}
            for kind, rows in per_level.items()
        },
        "failures": dict(failures),
    }
