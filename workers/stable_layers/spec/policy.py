"""Spec sections of the policy: the base model, the LoRA adapter and the SDE sampler."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stable_layers.spec.base import QWEN_LORA_TARGETS, Strict

_PEFT_INITS = ("gaussian", "default", "zero_b")
RELEASE_PROMPT = "a clean, well composed image"

PROTOCOLS: dict[str, dict[str, object]] = {
    "release": {
        "sampler": "heun",
        "steps": 50,
        "cfgScale": 1.0,
        "cfgNormalize": False,
        "resolution": 640,
        "layers": 4,
        "prompt": RELEASE_PROMPT,
        "seed": 42,
    },
    "qil": {"sampler": "euler", "steps": 50, "cfgScale": 4.0, "cfgNormalize": True, "resolution": 640, "layers": 4},
}
"""Published decomposition settings. `release`: the Stable-Layers release script (Heun, 50 steps,
CFG off, long side 640, 4 layers, its fixed prompt, seed 42 + image index). `qil`: the
Qwen-Image-Layered README (50 steps, true CFG 4 with `cfg_normalize`, the 640 bucket, 4 layers);
the README auto-captions each image, which this project does not (its prompt is fixed)."""
_SAMPLING = ("sampler", "steps", "cfgScale", "cfgNormalize", "resolution")


def protocol_of(settings: dict[str, object], reference: str | None = None) -> tuple[str, list[str]]:
    """(name of the protocol whose sampling settings these are, or `custom`; the protocol's other
    settings that differ, e.g. `layers 'gt' (protocol: 4)`). For `custom`, the differences are
    those from protocol `reference` when one is given."""

    def diff(proto: dict[str, object], keys: list[str]) -> list[str]:
        return [f"{k} {settings.get(k)!r} (protocol: {proto[k]!r})" for k in keys if settings.get(k) != proto[k]]

    for name, proto in PROTOCOLS.items():
        if all(settings.get(k) == proto[k] for k in _SAMPLING):
            return name, diff(proto, [k for k in proto if k not in _SAMPLING])
    return "custom", diff(PROTOCOLS[reference], list(PROTOCOLS[reference])) if reference else []


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
    prompt: str = RELEASE_PROMPT
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
    init: str = Field("gaussian", min_length=1)
    """How the adapter starts. `gaussian` or `default` (peft `init_lora_weights`; Kaiming A, zero
    B; both start as the identity adapter; `zero_b` is an alias of `default`), or PATH_OR_HUB_ID
    of an existing adapter to continue from: a PEFT adapter folder (`adapter_config.json`), a
    diffusers LoRA `.safetensors` file, a training checkpoint folder, or a hub id
    `owner/name[/subfolder]` such as the released Stable-Layers adapter. Its rank, alpha and
    adapted modules must equal `rank`, `alpha` and `targets`. Default gaussian [FG]."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA dropout. Default 0: dropout would make the replayed log-prob differ from the rollout's
    and break ratio = 1 on-policy [OURS]."""

    @property
    def init_from(self) -> str | None:
        """The adapter `init` names, or None for a fresh (peft-initialised) adapter."""
        return None if self.init in _PEFT_INITS else self.init


class SamplerSpec(Strict):
    train_steps: int = Field(10, ge=2, le=1000)
    """Denoising steps of a training rollout. Default 10 [FG Qwen-Image]. At least 2: one step
    gives NaN with the terminal-stretched schedule (model.md §6.9)."""
    eval_steps: int = Field(50, ge=2, le=1000)
    """Denoising steps for evaluation. Default 50 [SL release / FG]."""
    eval_sampler: Literal["heun", "euler"] = "heun"
    """ODE solver of evaluation (`stable-layers eval`, `train --evaluate`, the operator's
    evaluation Jobs; `stable-layers decompose` has `--sampler`) on the pipeline's own sigma
    schedule: `heun` (2nd order: two transformer calls per step, one on the last step to σ = 0,
    so 50 steps cost 99 calls) or `euler` (the pipeline's `__call__`, one call per step). Default
    heun [SL release: every published result used Heun, 50 steps]."""
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
    """[start, end) of the step indices the whole window lies in: its first step is drawn
    uniformly from start … end − sdeWindowSize per rollout (as flow_grpo). Default [0, 5) = the
    first half of 10 steps [FG Qwen-Image]."""
    cfg_scale: float = Field(1.0, ge=1.0)
    """True-CFG scale for rollouts and training; 1 disables CFG (one forward). Default 1 [SL release,
    flow_grpo README recommendation]."""
    cfg_normalize: bool = False
    """With `cfgScale > 1`: rescale the guided velocity to the conditional one's norm per token
    (the pipeline's `cfg_normalize`; the QIL README uses it with CFG 4). Default false [SL release:
    CFG off]."""
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
        if self.sde_window_size > hi - lo:
            raise ValueError(
                f"sdeWindowSize {self.sde_window_size} does not fit in sdeWindowRange {list(self.sde_window_range)} "
                f"(the whole window lies inside the range); widen sdeWindowRange or shrink sdeWindowSize"
            )
        return self
