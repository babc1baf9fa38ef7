"""Spec section of the reward: pixel scorer, VLM judge backends, combination, penalties."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stable_layers.spec.base import CRITERIA, Strict


class PixelRewardSpec(Strict):
    weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(CRITERIA, 1.0))
    """Weight of each of the five criteria in the pixel score. Default 1 each [OURS]."""
    blank_alpha: float = Field(0.002, ge=0, lt=1)
    """A layer whose visible coverage (fraction of pixels with alpha ≥ 0.5 that are not hidden by
    layers above) is below this is blank. Default 0.002 = 0.2 % of the canvas [OURS]."""
    recomposition_tolerance: float = Field(0.15, gt=0, le=1)
    """Mean absolute recomposition error (on white, [0,1] scale) at which `content_validity`
    reaches 0; it falls linearly from 1 at zero error. Default 0.15 [OURS]."""

    @model_validator(mode="after")
    def _known_criteria(self) -> PixelRewardSpec:
        _check_criteria(self.weights, "reward.pixel.weights")
        return self


def _check_criteria(weights: dict[str, float], where: str) -> None:
    unknown = sorted(set(weights) - set(CRITERIA))
    if unknown:
        raise ValueError(f"{where}: unknown criteria {unknown}; allowed: {', '.join(CRITERIA)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"{where}: weights must be >= 0")
    if weights and sum(weights.values()) <= 0:
        raise ValueError(f"{where}: at least one weight must be > 0")


class PenaltySpec(Strict):
    """Deterministic penalties subtracted from the combined reward (computed from pixels, so a
    judge cannot be talked out of them). Our addition to the paper (method.md §1.4, §5)."""

    blank_layer: float = Field(0.0, ge=0, le=1)
    """Subtracted when any layer is blank. Default 0 [OURS: an image with fewer elements than L
    legitimately leaves layers empty; `featureDistribution` already rewards spread]."""
    duplicate_of_composite: float = Field(0.25, ge=0, le=1)
    """Subtracted when a foreground layer repeats the whole composite (the classic degenerate
    decomposition). Default 0.25 [OURS]."""
    nothing_separated: float = Field(0.5, ge=0, le=1)
    """Subtracted when the foreground layers hold nothing but blanks and copies of the composite
    (everything in one layer: the paper's "single layer holding everything"). Without it that
    trivial stack recomposes perfectly and outscores real but imperfect decompositions. Default 0.5
    [OURS: large enough that the trivial stack stays below a true decomposition with an empty
    layer 0 or a duplicated composite, so a policy gains nothing by not decomposing]."""
    recomposition_error: float = Field(0.25, ge=0, le=1)
    """Subtracted when the layers, composited back to front on white, differ from the input by
    more than `recompositionThreshold` (mean absolute error in [0,1]). Default 0.25 [OURS: guards
    against reward hacking by a judge that does not check fidelity, method.md §5]."""
    recomposition_threshold: float = Field(0.10, gt=0, le=1)
    """Mean absolute recomposition error above which `recompositionError` applies. Default 0.10."""


class OpenAIJudgeSpec(Strict):
    base_url: str = "http://localhost:8000/v1"
    """OpenAI-compatible endpoint, e.g. the operator's vLLM judge Service
    `http://<run>-judge:8000/v1`. Default a local vLLM [OURS]."""
    model: str = "judge"
    """Model name sent in requests (vLLM's `--served-model-name`). Default `judge`, the name the
    operator serves under [OURS]."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself). Default none:
    vLLM needs no key and the client sends `EMPTY`."""
    max_concurrency: int = Field(16, ge=1, le=1024)
    """Requests in flight at once, per scorer (a semaphore). Default 16 [OURS: two G=8 groups]."""
    timeout: float = Field(120.0, gt=0)
    """Seconds per request attempt. Default 120 [OURS: a grid of 8 panels on a busy 7B server]."""
    retries: int = Field(3, ge=0, le=20)
    """Retries after a transport error (connection, timeout, HTTP 429/5xx), exponential backoff
    with jitter. Default 3 [OURS]."""
    backoff: float = Field(1.0, ge=0)
    """Initial backoff in seconds (doubles each retry, capped at 30 s). Default 1 [OURS]."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Sampling temperature. Default 0: a reward should be deterministic (method.md §1.4)."""
    seed: int | None = 0
    """Sampling seed sent with each request. Default 0 [OURS]."""
    max_tokens: int = Field(512, ge=16)
    """Answer token limit, sent as `max_completion_tokens`. Default 512 [OURS: the JSON answers
    are ~100 tokens; thinking models need more]."""
    unavailable_seconds: float = Field(600.0, ge=0)
    """How long the trainer waits, re-scoring with backoff, while every judge request of a group
    fails (connection refused, timeouts, HTTP 5xx); past it the run ends Failed with reason
    `JudgeUnavailable`. No step is counted while it waits. Default 600 [OURS: a judge pod
    restart takes minutes; less than torch.distributed's 30 min collective timeout]."""


class TransformersJudgeSpec(Strict):
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Hub id or local path of a Qwen2.5-VL / Qwen3-VL checkpoint (any
    `AutoModelForImageTextToText`). Default Qwen2.5-VL-7B-Instruct [OURS]."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Weight dtype. Default bfloat16."""
    device: str = "auto"
    """`auto` (CUDA if available), `cpu`, `cuda`, `cuda:N`. Default auto."""
    max_new_tokens: int = Field(512, ge=16)
    """Greedy decoding token limit. Default 512 [OURS]."""
    max_pixels: int = Field(1024 * 1024, ge=28 * 28)
    """Images are downscaled to at most this many pixels before the processor. Default 1 Mpx."""


class RewardSpec(Strict):
    kind: Literal["pixel", "openai", "transformers"] = "pixel"
    """`pixel`: the deterministic pixel scorer (no VLM); `openai`: a VLM behind any
    OpenAI-compatible endpoint (the operator's vLLM judge); `transformers`: an in-process VLM.
    Default pixel [OURS: runs anywhere]."""
    pixel: PixelRewardSpec = Field(default_factory=PixelRewardSpec)
    """Options of the pixel scorer."""
    stage_weight: float = Field(0.5, ge=0, le=1)
    """λ in reward = λ·stage1 + (1−λ)·stage2 (VLM kinds). Default 0.5 [method.md §1.4 proposal]."""
    weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(CRITERIA, 1.0))
    """Weight of each criterion in the VLM stage-1 score p = Σ w_c s_c / Σ w_c. Default 1 each."""
    scale: int = Field(10, ge=2, le=100)
    """Stage-1 and stage-2 answers are integers 0..scale, divided by scale. Default 10 [method.md]."""
    grid: bool = True
    """Run stage 2 (grid calibration). Off: reward = stage 1 only. Default true [SL]."""
    grid_repeats: int = Field(1, ge=1, le=8)
    """Stage-2 queries per group, each with a fresh shuffle; scores are averaged (position-bias
    control, method.md §1.4.5). Default 1 [OURS: cost]."""
    tile_size: int = Field(224, ge=64, le=1024)
    """Long side in pixels of each tile of a stage-1 panel. Default 224 [OURS]."""
    grid_max_side: int = Field(1536, ge=256, le=4096)
    """Bound on the grid image's long side; tiles shrink to fit G panels. Default 1536 [OURS:
    ~2k visual tokens for Qwen2.5-VL, legible at G = 8–16]."""
    penalties: PenaltySpec = Field(default_factory=PenaltySpec)
    """Deterministic penalties (all kinds, including pixel)."""
    openai: OpenAIJudgeSpec = Field(default_factory=OpenAIJudgeSpec)
    """Options of `kind: openai`."""
    transformers: TransformersJudgeSpec = Field(default_factory=TransformersJudgeSpec)
    """Options of `kind: transformers`."""
    overlap: bool = True
    """Score group k on a background event loop while the trainer samples group k+1. Default true
    [SL: "score while sampling"]."""
    shuffle_seed: int = 0
    """Seed of the grid shuffles (mixed with the image id and query number). Default 0."""

    @model_validator(mode="after")
    def _known_criteria(self) -> RewardSpec:
        _check_criteria(self.weights, "reward.weights")
        return self
