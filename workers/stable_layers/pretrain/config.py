"""The options of `stable-layers pretrain-tiny` — one frozen dataclass, saved with the checkpoints
(`--resume` refuses a run whose options differ) and in `training.json` — and the checkpointed state
of one training phase."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from stable_layers.spec import ModelSpec

DEFAULT_PROMPT: str = ModelSpec.model_fields["prompt"].default
"""The prompt the policy encodes by default (`model.prompt`): the tiny model is trained on this
prompt's embedding only."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the trained model. Saved with the checkpoints; `--resume` refuses
    a different configuration."""

    seed: int = 0
    resolution: int = 64
    """Working size (square; multiple of 16). 64 px → 8×8 latents → 16 tokens per frame."""
    design_size: int = 128
    """Designs are generated at this size and resized to `resolution`, as an input would be."""
    max_elements: int = 5
    # VAE
    vae_steps: int = 2400
    vae_batch: int = 8
    vae_designs_per_step: int = 3
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4
    vae_latent_noise: float = 0.05
    vae_mse_weight: float = 4.0
    """Weight of the colour MSE next to the colour L1 (`pretrain_vae.layer_reconstruction_loss`)."""
    vae_transparent_rgb_weight: float = 0.05
    """Weight of colour errors under fully transparent ground truth (1 = unweighted)."""
    vae_latent_gain: float = 8.0
    """`pretrain_vae.apply_latent_path_gain` at initialisation (1 = the builder's init)."""
    vae_base_dim: int = 16
    vae_dim_mult: tuple[int, ...] = (1, 1, 2, 2)
    vae_num_res_blocks: int = 1
    stats_designs: int = 96
    # transformer
    dit_steps: int = 3600
    dit_batch: int = 16
    dit_lr: float = 3e-3
    dit_logit_mean: float = 3.0
    """Location of the logit-normal noise-level distribution (`pretrain_dit.sample_sigmas`).
    Where each element goes is decided at high noise; > 0 trains more there."""
    dit_content_weight: float = 1.0
    """Loss weight of the element frames' latent pixels that hold content (differ from the
    transparent latent; `pretrain_dit.content_weights`); 1 = the plain mean. Off by default: ×10
    gave a better LayerD RGB L1 but a worse recomposition (docs/tiny-model.md, "Known problem")."""
    dit_content_threshold: float = 0.5
    """Mean squared distance (normalised latent units) from the transparent latent above which a
    latent pixel counts as content: ~30 % of element-frame pixels on the training set."""
    dit_layers: int = 6
    dit_heads: int = 4
    dit_head_dim: int = 32
    axes_dims_rope: tuple[int, ...] = (8, 12, 12)
    text_dim: int = 32
    dit_designs: int = 2000
    dit_canonical_order: bool = True
    """Train on `layers.canonical_order` of each design (the order of non-overlapping layers is
    not visible in the composite; the generator draws it at random)."""
    val_designs: int = 48
    prompt: str = DEFAULT_PROMPT
    # bookkeeping
    checkpoint_every: int = 100
    eval_every: int = 250
    warmup_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.resolution % 16 or self.resolution < 32:
            raise ValueError(
                f"resolution must be a multiple of 16 and >= 32 (8x VAE + 2x2 packing), got {self.resolution}"
            )
        if sum(self.axes_dims_rope) != self.dit_head_dim:
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must sum to dit_head_dim {self.dit_head_dim}")
        if self.dit_content_weight <= 0 or self.dit_content_threshold <= 0:
            raise ValueError(
                f"dit_content_weight ({self.dit_content_weight}) and dit_content_threshold "
                f"({self.dit_content_threshold}) must be > 0 (weight 1 turns the weighting off)"
            )
        if not 1 <= self.max_elements <= 5:
            raise ValueError(f"max_elements must be in 1..5, got {self.max_elements}")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown pretraining config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class Phase:
    """Training state of one phase, as checkpointed."""

    name: str
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
