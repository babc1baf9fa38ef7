"""Reward backends behind one interface (`base.RewardScorer`).

`build_scorer(spec.reward)` is what the trainer, `stable-layers score` and `judge-check` call.
Importing this package pulls in numpy only; openai/transformers load with their backend.
"""

from stable_layers.reward.base import Candidate, CandidateScore, Group, GroupScore, RewardScorer
from stable_layers.reward.factory import build_scorer

__all__ = ["Candidate", "CandidateScore", "Group", "GroupScore", "RewardScorer", "build_scorer"]
