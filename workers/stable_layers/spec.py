"""`RunSpec`: the one schema of a Stable-Layers training run.

Read by `stable-layers train`, embedded verbatim as the `spec.run` of the `StableLayersRun` custom
resource (the CRD's OpenAPI schema is generated from these models), and passed to trainer pods as
YAML. Field names are camelCase in YAML/JSON (Kubernetes convention); snake_case is accepted too.

Every field's docstring states its default and where the default comes from:
  [FG]  flow_grpo reference code (Qwen-Image configs unless noted) — shared/docs/method.md §1.6
  [SL]  the Stable-Layers inference release
  [OURS] our choice where neither says anything; the reason is given.

This module must stay importable without torch or diffusers: the operator image reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

QWEN_LORA_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
]

CRITERIA = (
    "semantic_separation",
    "alpha_cleanliness",
    "background_inpainting",
    "feature_distribution",
    "content_validity",
)
"""The five edit-centric criteria of the Stable-Layers rubric, in a fixed order."""


class SpecError(ValueError):
    """A run spec that cannot be used; the message names the file and the field path."""


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, docstrings become descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        validate_assignment=True,
    )


class ModelSpec(Strict):
    base: str = "Qwen/Qwen-Image-Layered"
    """Hub id or local directory of a `QwenImageLayeredPipeline`. Default: the base model of the
    paper [SL]. Ignored when `preset` is set."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of `base`. Default: none (the hub's main)."""
    preset: Literal["tiny", "tiny-random"] | None = None
    """`tiny`: the small layer-decomposition model shipped in this package (trained on synthetic
    designs, same classes as the real model); `tiny-random`: the same architecture with random
    weights (unit tests). Default: none, i.e. load `base` [OURS]."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Weight dtype of the frozen model. Default bfloat16 [FG]; SDE and log-prob math is always fp32.
    The tiny presets always run in float32 on CPU."""
    device: str = "auto"
    """Torch device for the transformer and VAE: `auto` (CUDA if available, else CPU), `cpu`,
    `cuda`, `cuda:N`. Default auto [OURS]."""
    text_encoder: Literal["device", "cpu"] = "cpu"
    """Where the Qwen2.5-VL text encoder runs. The prompt is fixed, so it is encoded once; `cpu`
    keeps ~16 GB off the GPU (model.md §5). Default cpu [OURS]."""
    prompt: str = "a clean, well composed image"
    """Fixed conditioning prompt. Default: the Stable-Layers release prompt [SL]."""
    gradient_checkpointing: bool = True
    """Recompute transformer activations in the backward pass; mandatory for the 20B model at
    640 px (model.md §5). Default true [FG]."""


class LoraSpec(Strict):
    rank: int = Field(64, ge=1, le=1024)
    """LoRA rank r. Default 64 [FG Qwen-Image; verl example]."""
    alpha: float = Field(128.0, gt=0)
    """LoRA alpha (scale = alpha / rank). Default 128 [FG]."""
    targets: list[str] = Field(default_factory=lambda: list(QWEN_LORA_TARGETS), min_length=1)
    """Module-name suffixes in the transformer that get adapters. Default: the 12 attention and
    MLP projections [FG]."""
    init: Literal["gaussian", "default", "zero_b"] = "gaussian"
    """peft `init_lora_weights`: `gaussian` or `default` (Kaiming A, zero B; both start as the
    identity adapter). `zero_b` is an alias of `default`. Default gaussian [FG]."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA dropout. Default 0: dropout would make the replayed log-prob differ from the rollout's
    and break ratio = 1 on-policy [OURS]."""


class DataSpec(Strict):
    kind: Literal["synthetic", "folder", "parquet", "s3"] = "synthetic"
    """Where training images come from: generated synthetic designs, a local folder of images, a
    Parquet / `datasets` directory with an image column, or an S3 prefix of images. Default
    synthetic [OURS: runs with no data]."""
    path: str | None = None
    """Folder, Parquet file/directory or `s3://bucket/prefix`. Required unless kind is synthetic."""
    image_column: str = "image"
    """Image column of a Parquet / `datasets` source. Default `image` [OURS]."""
    num_images: int | None = Field(None, ge=1)
    """Synthetic: how many designs to generate; other kinds: use at most this many. Default: all
    (synthetic: 256)."""
    seed: int = Field(0, ge=0)
    """Seed of the shuffle; synthetic designs use training seeds `seed .. seed+numImages-1`.
    Default 0."""
    shuffle: bool = True
    """Shuffle images each pass. Default true."""
    size: int = Field(128, ge=32, le=1024)
    """Synthetic only: side of the generated designs in pixels (the model resizes its input to
    `sampler.resolution` anyway). Default 128 [OURS: the synthetic generator's default]."""

    @model_validator(mode="after")
    def _path_needed(self) -> DataSpec:
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.kind is {self.kind!r}")
        if self.kind == "s3" and self.path and not self.path.startswith("s3://"):
            raise ValueError("data.path must start with s3:// when data.kind is 's3'")
        return self


class SamplerSpec(Strict):
    train_steps: int = Field(10, ge=2, le=1000)
    """Denoising steps of a training rollout. Default 10 [FG Qwen-Image]. At least 2: one step
    gives NaN with the terminal-stretched schedule (model.md §6.9)."""
    eval_steps: int = Field(50, ge=2, le=1000)
    """Denoising steps for evaluation. Default 50 [SL release / FG]."""
    noise_level: float = Field(1.2, ge=0, le=5)
    """SDE noise level `a` (sigma_t = a·sqrt(t/(1−t))); 0 reproduces the deterministic sampler.
    Default 1.2 [FG Qwen-Image]; use ~0.8 with `sdeType: cps` [FG]."""
    sde_type: Literal["flow", "cps"] = "flow"
    """`flow`: Flow-GRPO's Euler–Maruyama SDE; `cps`: coefficients-preserving sampling with a
    properly normalised Gaussian log-density (method.md §1.2). Default flow [FG]."""
    sde_window_size: int = Field(2, ge=0)
    """Number of consecutive stochastic (recorded, trained) steps; the rest are ODE steps.
    0 means every step except the last (the SD3 path). Default 2 [FG Qwen-Image]."""
    sde_window_range: tuple[int, int] = (0, 5)
    """[start, end) of step indices the window's first step is drawn from, per rollout.
    Default [0, 5) = the first half of 10 steps [FG Qwen-Image]."""
    cfg_scale: float = Field(1.0, ge=1.0)
    """True-CFG scale for rollouts and training; 1 disables CFG (one forward). Default 1 [SL release,
    flow_grpo README recommendation]."""
    resolution: int = Field(640, ge=32, le=2048)
    """Long side in pixels of the working size (sides rounded to multiples of 16 × VAE factor / 8).
    Default 640 [SL release]."""
    layers: int = Field(4, ge=1, le=16)
    """Number of RGBA output layers L. Default 4 [SL release]."""
    seed: int = 42
    """Base seed; per-candidate noise is derived from (seed, iteration, image id, candidate).
    Default 42 [SL release]."""
    same_latent: bool = False
    """Share the initial noise within a group (DanceGRPO's init_same_noise). Default false [FG]."""

    @model_validator(mode="after")
    def _window(self) -> SamplerSpec:
        lo, hi = self.sde_window_range
        if not 0 <= lo < hi <= self.train_steps:
            raise ValueError(
                f"sdeWindowRange must satisfy 0 <= start < end <= trainSteps ({self.train_steps}); "
                f"got {list(self.sde_window_range)}"
            )
        if self.sde_window_size > 0 and hi - 1 + self.sde_window_size > self.train_steps:
            raise ValueError(
                f"sdeWindowSize {self.sde_window_size} starting as late as step {hi - 1} runs past "
                f"trainSteps {self.train_steps}; shrink sdeWindowRange or sdeWindowSize"
            )
        return self


class GRPOSpec(Strict):
    group_size: int = Field(8, ge=2, le=64)
    """Candidates G sampled per image. Default 8 [OURS: a grid of 8 stays legible to a 7–9B VLM;
    FG uses 16–24]."""
    images_per_iteration: int = Field(4, ge=1)
    """Unique images per iteration across all ranks; each is sampled G times. Default 4 [OURS]."""
    micro_batch_size: int = Field(1, ge=1)
    """Samples per training forward; keep it equal to the rollout batch (method.md §1.3H).
    Default 1 [FG]."""
    max_steps: int = Field(600, ge=1)
    """Optimizer steps of the run. Default 600 [OURS; the SL release adapter is `checkpoint-600`]."""
    optimizer_steps_per_iteration: int = Field(2, ge=1)
    """Optimizer steps per iteration: the first is on-policy, later ones slightly off-policy.
    Default 2 [FG]."""
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    """Micro-batches per optimizer step. Default: derived so that each iteration makes
    `optimizerStepsPerIteration` steps [FG]."""
    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate. Default 1e-4 [OURS; GRPO-Guard configs; FG base uses 3e-4]."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay. Default 1e-4 [FG]."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas. Default (0.9, 0.999) [FG]."""
    adam_eps: float = Field(1e-8, gt=0)
    """AdamW epsilon. Default 1e-8 [FG]."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient-norm clip. Default 1.0 [FG]."""
    clip_range: float = Field(1e-4, gt=0, lt=1)
    """PPO clip ε of the ratio. Default 1e-4 [FG]; GRPO-Guard uses 2e-6–4e-6 with RatioNorm."""
    adv_clip_max: float = Field(5.0, gt=0)
    """Advantages are clipped to ±this. Default 5 [FG]."""
    std_mode: Literal["group", "global"] = "group"
    """Advantage normalisation: by the group's reward std or by the std of all rewards of the
    iteration. Default group [OURS: the grid calibration re-scores within a group; GRPO-Guard
    uses group too]."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the KL to the adapter-disabled reference policy. Default 0 [FG Qwen-Image]."""
    kl_form: Literal["per_element", "reference"] = "per_element"
    """`per_element`: the exact KL between the two transition Gaussians divided by the latent size
    D, mean_d(μθ − μref)²/(2s²) — the same per-element convention as the log-probs;
    `reference`: flow_grpo's mean_d(μθ − μref)²/(2σt²), i.e. per_element × Δt (method.md §1.3D).
    Default per_element [OURS: it is the actual KL of the policy steps]."""
    ratio_norm: bool = True
    """Use RatioNorm (GRPO-Guard) for the ratio. Default true [OURS, as Stable-Layers]."""
    ratio_norm_variant: Literal["per_sample", "batch_scalar", "dimension_aware"] = "dimension_aware"
    """`per_sample`: GRPO-Guard's formula with the bias per sample, fp32; `batch_scalar`: the
    reference code's batch-averaged bias (reproduction only); `dimension_aware`: per_sample with the
    normalised log-ratio rescaled by sqrt(D / dimRef) so its spread no longer shrinks with the
    latent length D (our reading of Stable-Layers' "stabilisation for high-dimensional latent
    sequences", method.md §1.5). Default dimension_aware [OURS]."""
    ratio_norm_dim_ref: int = Field(65536, ge=1)
    """Reference latent size D_ref for `dimension_aware` (SD3.5-M at 512 px, where GRPO-Guard's
    clip ranges were tuned). Default 65536 [OURS]."""
    log_ratio_clamp: float = Field(20.0, gt=0)
    """The log-ratio is clamped to ±this before exp (overflow guard). Default 20 [OURS]."""
    ema: bool = False
    """Keep an EMA of the LoRA weights for evaluation/checkpoints. Default false [FG Qwen-Image]."""
    ema_decay: float = Field(0.9, gt=0, lt=1)
    """EMA decay (with warm-up min((1+s)/(10+s), decay)). Default 0.9 [FG]."""
    ema_every: int = Field(8, ge=1)
    """Update the EMA every this many optimizer steps. Default 8 [FG]."""


class DistributedSpec(Strict):
    engine: Literal["deepspeed", "torch"] = "deepspeed"
    """`deepspeed`: the DeepSpeed engine (ZeRO); `torch`: plain PyTorch (one process, or
    DDP-equivalent all-reduce). Default deepspeed [the user's design]."""
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage. Default 2 [OURS: with LoRA, stage 3 only helps by sharding the frozen
    base and has known peft/diffusers caveats — infra.md §F]."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; auto = nccl with CUDA, gloo on CPU. Default auto."""
    timeout_minutes: int = Field(60, ge=1)
    """Collective timeout; long because VLM scoring may stall a rank (flow_grpo #161). Default 60."""


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
    """Answer token limit. Default 512 [OURS: the JSON answers are ~100 tokens; thinking models
    need more]."""


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


class CheckpointSpec(Strict):
    uri: str | None = None
    """Where the run lives (`file://`, a path, or `s3://bucket/prefix`); checkpoints go under
    `checkpoints/`. Default: the `--out` directory of the CLI."""
    every_steps: int = Field(50, ge=1)
    """Save a checkpoint every this many optimizer steps (and at the end). Default 50 [OURS]."""
    keep: int = Field(3, ge=1)
    """Keep the newest this many committed checkpoints; the newest is never deleted. Default 3."""


class EvalThresholds(Strict):
    """Thresholds of the layer-quality metrics (shared/docs/eval.md A.7). The Stable-Layers paper
    gives no definitions, so every default is [OURS: eval.md A.7 proposal]; tune once, then freeze."""

    coverage_alpha: float = Field(0.05, ge=0, lt=1)
    """A pixel counts as covered by a layer when its alpha exceeds this. Default 0.05."""
    blank_coverage: float = Field(0.001, ge=0, le=1)
    """A foreground layer is blank when its covered fraction is below this... Default 0.001."""
    blank_max_alpha: float = Field(0.05, ge=0, le=1)
    """...or when its maximum alpha is below this. Default 0.05."""
    duplicate_coverage: float = Field(0.9, ge=0, le=1)
    """A foreground layer may duplicate the composite when it covers more than this fraction...
    Default 0.9."""
    duplicate_l1: float = Field(0.05, ge=0, le=1)
    """...and, over white, lies within this mean L1 of the input. Default 0.05."""
    background_coverage: float = Field(0.95, ge=0, le=1)
    """Layer 0 is degenerate when it covers less than this fraction (not opaque)... Default 0.95."""
    background_copy_l1: float = Field(0.02, ge=0, le=1)
    """...or when, over white, it is within this mean L1 of the input on the pixels covered by the
    non-blank foreground layers (nothing was inpainted under them). Default 0.02."""
    haze_low: float = Field(0.02, ge=0, le=1)
    """Haze pixels have alpha strictly between `hazeLow` and `hazeHigh`. Default 0.02."""
    haze_high: float = Field(0.98, ge=0, le=1)
    """Upper bound of haze alpha. Default 0.98."""
    haze_band_px: int = Field(3, ge=0)
    """Semi-transparent pixels within this many pixels of the alpha = 0.5 contour are edge
    anti-aliasing, not haze. Default 3."""
    haze_fraction: float = Field(0.2, ge=0, le=1)
    """A layer is artifact-heavy when haze exceeds this share of its covered area... Default 0.2."""
    speckle_max_px: int = Field(16, ge=1)
    """...or when its alpha > 0.5 mask has many connected components smaller than this (pixels)...
    Default 16."""
    speckle_count: int = Field(20, ge=0)
    """...more than this many. Default 20."""


class CrelloEvalSpec(Strict):
    """How Crello designs become (composite, ground-truth layers) — LayerD's rules, eval.md A.1."""

    split: str = "test"
    """Split to evaluate. Default test [LayerD]."""
    revision: str = "5.1.0"
    """Hub revision when loading `cyberagent/crello` from the hub. Default 5.1.0 [LayerD]."""
    short_side: int = Field(512, ge=16, le=4096)
    """Rendered short side in pixels (LayerD's tool: 512; its library function: 360). Default 512."""
    max_layers: int = Field(10, ge=2, le=64)
    """Designs with more kept GT layers than this are skipped (and counted), because the model is
    asked for as many layers as the GT has. Default 10 [OURS]."""


class EvalSpec(Strict):
    every_steps: int = Field(0, ge=0)
    """Evaluate every this many optimizer steps; 0 = only at the end. Default 0 [OURS]."""
    data: str | None = None
    """Evaluation data, e.g. `crello:/data/crello` or `synthetic:heldout`. Default: none."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many designs. Default: all."""
    layers: int | Literal["gt"] = "gt"
    """Layers requested from the model per design: `gt` = the GT layer count L (needed for per-layer
    L1 by L), or a fixed number. Default gt [OURS: QIL's Crello setting is not published]."""
    seed: int = 42
    """Design i is decomposed with seed `seed + i`, identically for the base and the fine-tuned
    model. Default 42 [SL release: seed 42 + image index]."""
    max_edits: int = Field(5, ge=0, le=20)
    """LayerD protocol: maximum number of merges k. Default 5 [LayerD CLI]."""
    heldout_designs: int = Field(64, ge=1)
    """`synthetic:heldout`: how many held-out synthetic designs to generate. Default 64 [OURS]."""
    heldout_size: int = Field(256, ge=32, le=2048)
    """`synthetic:heldout`: side of the generated designs in pixels. Default 256 [OURS]."""
    gallery: int = Field(12, ge=0)
    """Designs shown in the HTML gallery. Default 12 [OURS: keeps the page light]."""
    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples over designs for the 95% intervals of base→fine-tuned differences;
    0 disables. Default 1000 [OURS]."""
    workers: int = Field(0, ge=0)
    """Processes for the LayerD metric; 0 = one per CPU core. Default 0."""
    thresholds: EvalThresholds = Field(default_factory=EvalThresholds)
    """Thresholds of the blank / duplicate / degenerate / artifact metrics."""
    crello: CrelloEvalSpec = Field(default_factory=CrelloEvalSpec)
    """Crello loading and rendering options."""


class MetricsSpec(Strict):
    """Prometheus exporter of the trainer (rank 0), see docs/metrics.md."""

    port: int | None = Field(None, ge=0, le=65535)
    """Port of the `/metrics` endpoint; `--metrics-port` overrides it; none = no exporter (local
    runs). The operator sets 9400. Default none [OURS]."""
    addr: str = "0.0.0.0"
    """Bind address of the endpoint. Default all interfaces (Prometheus scrapes the pod IP)."""
    group_std_buckets: list[float] = Field(
        default_factory=lambda: [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5], min_length=1
    )
    """Upper bounds of the `stable_layers_group_reward_std` histogram buckets (rewards lie in about
    [0, 1], so the within-group std is at most 0.5). The first bucket (0.001) isolates groups with
    no usable spread. Default [OURS]."""


class RolloutsSpec(Strict):
    """Sampled rollout records written to `rollouts/step-NNNNNN/<group>/` (docs/storage.md)."""

    rate: float = Field(0.05, ge=0, le=1)
    """Fraction of groups recorded (input, every candidate's layers, scores, advantages). Which
    groups is a deterministic function of (seed, step, image id), so a resumed run records the
    same ones. 0 disables. Default 0.05 [OURS: one group in 20 keeps S3 traffic small]."""
    seed: int = 0
    """Seed of the sampling decision. Default 0."""
    max_per_step: int | None = Field(None, ge=1)
    """Record at most this many groups per step. Default: no limit."""


class RunSpec(Strict):
    """One Stable-Layers Flow-GRPO fine-tuning run."""

    name: str = Field("stable-layers", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    """Run name (DNS label; used in metric labels and object names). Default `stable-layers`."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    grpo: GRPOSpec = Field(default_factory=GRPOSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    rollouts: RolloutsSpec = Field(default_factory=RolloutsSpec)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with camelCase keys (what YAML files and the CRD hold)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names allowed at the parent of `loc` (for 'unknown field' messages)."""
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        field = next((f for n, f in cls.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        cls = field.annotation
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(f.alias or n for n, f in cls.model_fields.items())
    return []


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] = RunSpec) -> str:
    """One readable message: `source: field.path: problem (got X)` per error, with the fix."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _field_path(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{source}: {path}: unknown field{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_run_spec(data: Any, source: str = "<spec>") -> RunSpec:
    """Validate a dict (already parsed YAML/JSON) into a RunSpec, raising `SpecError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the run spec must be a mapping of sections (model, lora, ...), got {type(data).__name__}")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_run_spec(path: str | Path) -> RunSpec:
    """Read a YAML or JSON run spec from a file, raising `SpecError` naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: run spec file not found; pass the path of a YAML file such as examples/local-run.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{p}: cannot read the run spec ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    return parse_run_spec(data, str(p))
