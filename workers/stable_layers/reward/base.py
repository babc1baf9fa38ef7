"""The reward interface the trainer calls.

A reward scores one *group*: the G candidate decompositions of one input image. Scoring a whole
group at once is what lets the VLM reward run its grid calibration (stage 2), and lets remote
backends send the group's stage-1 requests concurrently. Scorers are async so the trainer can score
group k while it samples group k+1 (`score_group` is awaited on a background event loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Candidate:
    """One candidate decomposition: L RGBA uint8 H×W×4 layers, back to front."""

    layers: list[np.ndarray]


@dataclass
class Group:
    """The G candidates of one input image."""

    image_id: str
    image: np.ndarray  # the input, H×W×4 (or ×3) uint8, same size as the layers
    candidates: list[Candidate]


@dataclass
class CandidateScore:
    """Everything a scorer knows about one candidate.

    `reward` is the scalar GRPO uses. `criteria` maps each of the five criteria (spec.CRITERIA) to
    a score in [0, 1]. `stages` holds each stage's scalar in [0, 1] (e.g. {"1": p, "2": q}) and
    `raw` anything worth keeping for rollout records (raw judge answers, flags, penalties).
    """

    reward: float
    criteria: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupScore:
    image_id: str
    scores: list[CandidateScore]
    stats: dict[str, float] = field(default_factory=dict)
    """Group-level counters (parse failures, retries, latency seconds, ...) for metrics."""
    latencies: list[float] = field(default_factory=list)
    """Seconds of each judge request of this group (for a latency histogram); empty for pixel."""

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.scores]


@runtime_checkable
class RewardScorer(Protocol):
    """What the trainer needs from a reward backend."""

    name: str

    async def score_group(self, group: Group) -> GroupScore:
        """Score all candidates of one group; never raises for a single bad answer (backends
        apply their documented failure policy and report it in `GroupScore.stats`)."""
        ...

    async def aclose(self) -> None:
        """Release connections/models."""
        ...


@dataclass
class PixelMeasures:
    """Deterministic measures of one candidate; `criteria` are the five scores in [0, 1]."""

    criteria: dict[str, float]
    recomposition_error: float
    blank_layers: list[int] = field(default_factory=list)
    hidden_layers: list[int] = field(default_factory=list)
    duplicate_layers: list[int] = field(default_factory=list)
    separated_area: float = 1.0
    """Canvas share held by foreground layers that are not copies of the composite."""
    nothing_separated: bool = False
    """A multi-layer stack whose foreground holds nothing but blanks and copies of the composite:
    everything sits in one layer (a one-layer stack was never asked to separate)."""

    @property
    def any_blank(self) -> bool:
        return bool(self.blank_layers)

    @property
    def any_duplicate(self) -> bool:
        return bool(self.duplicate_layers)

    def as_dict(self) -> dict[str, object]:
        return {
            "criteria": dict(self.criteria),
            "recomposition_error": self.recomposition_error,
            "blank_layers": list(self.blank_layers),
            "hidden_layers": list(self.hidden_layers),
            "duplicate_layers": list(self.duplicate_layers),
            "separated_area": self.separated_area,
            "nothing_separated": self.nothing_separated,
        }


class JudgeUnavailable(RuntimeError):
    """A request that failed after the backend's retries (connection, timeout, HTTP 4xx/5xx)."""

    def __init__(self, message: str, *, retries: int = 0, latencies: tuple[float, ...] = ()) -> None:
        super().__init__(message)
        self.retries = retries
        self.latencies = latencies


class JudgeConfigError(RuntimeError):
    """The judge rejects every request (unknown model, bad key): raised, since retrying is futile."""
