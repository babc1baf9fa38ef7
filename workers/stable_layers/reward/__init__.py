"""Reward backends behind one interface (`base.RewardScorer`).

`build_scorer(spec.reward)` is what the trainer, `stable-layers score` and `judge-check` call.
Importing this package pulls in numpy only; openai/transformers load with their backend.
"""

from stable_layers.reward.base import (
    Candidate,
    CandidateScore,
    Group,
    GroupScore,
    JudgeConfigError,
    JudgeUnavailable,
    PixelMeasures,
    RewardScorer,
)
from stable_layers.reward.factory import build_scorer
from stable_layers.reward.group_io import load_group, save_group, scores_document, write_json_atomic
from stable_layers.reward.judge_check import gate, judge_check

__all__ = [
    "Candidate",
    "CandidateScore",
    "Group",
    "GroupScore",
    "JudgeConfigError",
    "JudgeUnavailable",
    "PixelMeasures",
    "RewardScorer",
    "build_scorer",
    "gate",
    "judge_check",
    "load_group",
    "save_group",
    "scores_document",
    "write_json_atomic",
]
