"""Synthetic trainer events (step records, groups, GroupScores with judge stats) for the metrics tests."""

from __future__ import annotations

import numpy as np

from stable_layers.reward.base import Candidate, CandidateScore, Group, GroupScore
from stable_layers.spec import CRITERIA

EXPORTED = [
    "stable_layers_reward_mean",
    "stable_layers_reward_std",
    "stable_layers_group_reward_std",
    "stable_layers_zero_std_group_ratio",
    "stable_layers_stage_group_std",
    "stable_layers_criterion_score",
    "stable_layers_loss",
    "stable_layers_kl",
    "stable_layers_clipfrac",
    "stable_layers_step",
    "stable_layers_step_seconds",
    "stable_layers_samples_per_second",
    "stable_layers_judge_requests_total",
    "stable_layers_judge_latency_seconds",
    "stable_layers_checkpoint_upload_seconds",
]
"""The stable names of issue 5 (docs/metrics.md)."""


def make_group(image_id: str, g: int = 4, layers: int = 2, size: int = 8, seed: int = 0) -> Group:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    cands = [
        Candidate([rng.integers(0, 256, (size, size, 4), dtype=np.uint8) for _ in range(layers)]) for _ in range(g)
    ]
    return Group(image_id, img, cands)


def make_score(image_id: str, rewards: list[float], *, stage2: bool = True, judge: bool = True) -> GroupScore:
    scores = []
    for i, r in enumerate(rewards):
        crit = {c: min(1.0, 0.1 * (k + 1) + 0.01 * i) for k, c in enumerate(CRITERIA)}
        stages = {"1": r} if not stage2 else {"1": r, "2": 1.0 - r}
        scores.append(
            CandidateScore(reward=r, criteria=crit, stages=stages, flags={"blank_layer": False}, raw={"n": i})
        )
    stats: dict[str, float] = {"score_seconds": 0.3}
    latencies: list[float] = []
    if judge:  # the keys reward/vlm.py writes: G rubric requests + 1 grid + 1 re-ask after a parse error
        n = len(rewards)
        stats.update(
            requests=n + 2,
            requests_ok=n + 1,
            requests_parse_error=1,
            requests_error=0,
            reasks=1,
            retries=2,
            stage1_fallbacks=0,
            stage2_failed=1,
            latency_seconds_mean=0.5,
        )
        latencies = [0.5] * (n + 2)
    return GroupScore(image_id, scores, stats, latencies=latencies)


def step_record(step: int, zero_std_ratio: float = 0.25) -> dict[str, float]:
    return {
        "step": step,
        "reward_mean": 0.5 + 0.01 * step,
        "reward_std": 0.1,
        "group_std_mean": 0.08,
        "zero_std_ratio": zero_std_ratio,
        "loss": -0.01 * step,
        "kl": 0.0,
        "approx_kl": 1e-6,
        "clipfrac": 0.2,
        "step_seconds": 1.5,
        "samples_per_second": 5.3,
    }
