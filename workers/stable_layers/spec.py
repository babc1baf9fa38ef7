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
    seed: int = 0
    """Seed of the shuffle (and of synthetic generation). Default 0."""
    shuffle: bool = True
    """Shuffle images each pass. Default true."""

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
                f"sampler.sdeWindowRange must satisfy 0 <= start < end <= trainSteps ({self.train_steps}); "
                f"got {list(self.sde_window_range)}"
            )
        if self.sde_window_size > 0 and hi - 1 + self.sde_window_size > self.train_steps:
            raise ValueError(
                f"sampler.sdeWindowSize {self.sde_window_size} starting as late as step {hi - 1} runs past "
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


class RewardSpec(Strict):
    kind: Literal["pixel", "openai", "transformers"] = "pixel"
    """`pixel`: the deterministic pixel scorer (no VLM); `openai`: a VLM behind any
    OpenAI-compatible endpoint (the operator's vLLM judge); `transformers`: an in-process VLM.
    Default pixel [OURS: runs anywhere]."""
    pixel: PixelRewardSpec = Field(default_factory=PixelRewardSpec)
    """Options of the pixel scorer."""


class CheckpointSpec(Strict):
    uri: str | None = None
    """Where the run lives (`file://`, a path, or `s3://bucket/prefix`); checkpoints go under
    `checkpoints/`. Default: the `--out` directory of the CLI."""
    every_steps: int = Field(50, ge=1)
    """Save a checkpoint every this many optimizer steps (and at the end). Default 50 [OURS]."""
    keep: int = Field(3, ge=1)
    """Keep the newest this many committed checkpoints; the newest is never deleted. Default 3."""


class EvalSpec(Strict):
    every_steps: int = Field(0, ge=0)
    """Evaluate every this many optimizer steps; 0 = only at the end. Default 0 [OURS]."""
    data: str | None = None
    """Evaluation data, e.g. `crello:/data/crello` or `synthetic:heldout`. Default: none."""
    limit: int | None = Field(None, ge=1)
    """Evaluate at most this many designs. Default: all."""


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
