"""Spec sections of training: images, the GRPO update, distribution and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stable_layers.spec.base import Strict


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


class GRPOSpec(Strict):
    group_size: int = Field(8, ge=2, le=64)
    """Candidates G sampled per image. Default 8 [OURS: a grid of 8 stays legible to a 7–9B VLM;
    FG uses 16–24]."""
    images_per_iteration: int = Field(4, ge=1)
    """Unique images per iteration across all ranks; each is sampled G times. Default 4 [OURS]."""
    micro_batch_size: int = Field(1, ge=1)
    """Candidates per training (replay) forward; a micro-batch never spans two rollouts. Replay
    reproduces the rollout's log-probs bit for bit only when this equals the rollout batch (the
    candidates of one group on one rank); any other value is exact in fp32 and equal to bf16
    rounding otherwise (method.md §1.3H). Default 1 [FG]: the smallest activation memory."""
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


class CheckpointSpec(Strict):
    uri: str | None = None
    """Where the run lives (`file://`, a path, or `s3://bucket/prefix`); checkpoints go under
    `checkpoints/`. Default: the `--out` directory of the CLI."""
    every_steps: int = Field(50, ge=1)
    """Save a checkpoint every this many optimizer steps (and at the end). Default 50 [OURS]."""
    keep: int = Field(3, ge=1)
    """Keep the newest this many committed checkpoints; the newest is never deleted. Default 3."""
