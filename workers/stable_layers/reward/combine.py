"""Pure math of the reward: criterion weighting, stage combination, penalties, group statistics.

Keys of `GroupScore.stats` written here (the metrics exporter maps them to Prometheus names):
  stage1_std, stage2_std, reward_std        within-group population std of each stage / the reward
  stage1_range, stage2_range, reward_range  max − min within the group
  criterion_mean.<name>                     mean of one criterion over the group's candidates
Backends add their own request counters (see `vlm.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stable_layers.spec import CRITERIA, PenaltySpec

if TYPE_CHECKING:
    from stable_layers.reward.base import CandidateScore, PixelMeasures


def weighted_mean(criteria: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ w_c s_c / Σ w_c over the five criteria; a criterion missing from `weights` has weight 1."""
    w = np.array([weights.get(c, 1.0) for c in CRITERIA], dtype=np.float64)
    s = np.array([criteria[c] for c in CRITERIA], dtype=np.float64)
    return float((w * s).sum() / w.sum())


def combine_stages(stage1: float, stage2: float | None, stage_weight: float) -> float:
    """R = λ·stage1 + (1−λ)·stage2; without a stage-2 score the reward is stage 1 alone."""
    if stage2 is None:
        return float(stage1)
    return float(stage_weight * stage1 + (1.0 - stage_weight) * stage2)


def apply_penalties(reward: float, measures: PixelMeasures, spec: PenaltySpec) -> tuple[float, dict[str, float]]:
    """Subtract the deterministic penalties that apply; returns (reward, {name: amount})."""
    applied: dict[str, float] = {}
    if spec.blank_layer > 0 and measures.any_blank:
        applied["blank_layer"] = spec.blank_layer
    if spec.duplicate_of_composite > 0 and measures.any_duplicate:
        applied["duplicate_of_composite"] = spec.duplicate_of_composite
    if spec.nothing_separated > 0 and measures.nothing_separated:
        applied["nothing_separated"] = spec.nothing_separated
    if spec.recomposition_error > 0 and measures.recomposition_error > spec.recomposition_threshold:
        applied["recomposition_error"] = spec.recomposition_error
    return float(reward - sum(applied.values())), applied


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(population std, max − min) of a group's values; (0, 0) for an empty list."""
    if not values:
        return 0.0, 0.0
    a = np.asarray(values, dtype=np.float64)
    return float(a.std()), float(a.max() - a.min())


def group_stats(scores: Sequence[CandidateScore]) -> dict[str, float]:
    """Within-group spread per stage and per-criterion means (see the module docstring)."""
    stats: dict[str, float] = {}
    for name, values in (
        ("stage1", [s.stages["1"] for s in scores if "1" in s.stages]),
        ("stage2", [s.stages["2"] for s in scores if "2" in s.stages]),
        ("reward", [s.reward for s in scores]),
    ):
        if values:
            stats[f"{name}_std"], stats[f"{name}_range"] = spread(values)
    for c in CRITERIA:
        vals = [s.criteria[c] for s in scores if c in s.criteria]
        if vals:
            stats[f"criterion_mean.{c}"] = float(np.mean(vals))
    return stats
