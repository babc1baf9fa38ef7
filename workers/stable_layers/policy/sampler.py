"""Flow-GRPO sampling for Qwen-Image-Layered: SDE step with log-prob, group rollouts, replay, decode.

The denoising loop reuses the pipeline's own helpers (`image_processor`, `prepare_latents`,
`_pack_latents`/`_unpack_latents`, `retrieve_timesteps`, the transformer call of its loop) but not
`__call__`, so it runs at any working size, samples all G candidates of an image in one batched
forward per step, and records what the trainer replays. Conventions (shared/docs/method.md §1.2):
sigma is flow time (1 = noise, 0 = data); all SDE and log-prob math is fp32; a log-prob is the
per-element Gaussian log-density averaged over every non-batch dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stable_layers.layers import as_rgba_array
from stable_layers.policy.sde import SdeType, sde_step_with_logprob

if TYPE_CHECKING:
    from PIL import Image

    from stable_layers.policy.model import Policy
    from stable_layers.spec import SamplerSpec

__all__ = [
    "Condition",
    "Rollout",
    "decode",
    "predict_velocity",
    "prepare",
    "replay_log_prob",
    "sample_group",
    "schedule",
    "sde_step_with_logprob",
    "sde_window",
    "seed_generators",
    "working_size",
]


# --------------------------------------------------------------------------------------------
# Conditioning and the velocity, as in the pipeline's loop
# --------------------------------------------------------------------------------------------
def working_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the long side ≈ `resolution`, aspect kept, both multiples of `multiple`
    (2 × the VAE factor, what latent packing needs)."""
    scale = resolution / max(width, height)
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return int(w), int(h)


@dataclass
class Condition:
    """Everything the loop needs besides the noisy latents, for one image and B samples."""

    image_latents: torch.Tensor  # (B, Nc, 64) weight dtype
    img_shapes: list[list[tuple[int, int, int]]]
    height: int
    width: int
    layers: int
    source_size: tuple[int, int]  # (width, height) of the input image


@torch.no_grad()  # prepare_latents runs the VAE encoder and is not no_grad (model.md §6.10)
def prepare(
    policy: Policy, image: np.ndarray | Image.Image, *, resolution: int, layers: int, generators: list[torch.Generator]
) -> tuple[torch.Tensor, Condition]:
    """Initial noise (B, (L+1)·hw, 64) — sample b drawn from `generators[b]` — and the condition."""
    from PIL import Image as PILImage

    pipe = policy.pipe
    rgba = as_rgba_array(image)  # the RGBA VAE rejects RGB input (model.md §6.5)
    src_h, src_w = rgba.shape[:2]
    multiple = pipe.vae_scale_factor * 2
    width, height = working_size(src_w, src_h, resolution, multiple)
    pil = pipe.image_processor.resize(PILImage.fromarray(rgba, "RGBA"), height, width)
    pixels = pipe.image_processor.preprocess(pil, height, width).unsqueeze(2)  # (1,4,1,H,W): video VAE
    channels = policy.transformer.config.in_channels // 4
    latents, image_latents = pipe.prepare_latents(
        pixels, len(generators), channels, height, width, layers, policy.dtype, policy.device, generators
    )
    hp, wp = height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2
    shapes = [(1, hp, wp)] * (layers + 1) + [(1, hp, wp)]  # L+1 generated frames, then the condition frame
    cond = Condition(image_latents, [list(shapes) for _ in generators], height, width, layers, (src_w, src_h))
    return latents, cond


def schedule(policy: Policy, steps: int, cond_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (S,), sigmas (S+1,) fp32 ending in 0) exactly as `__call__` builds them."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_layered import retrieve_timesteps

    if steps < 2:
        raise ValueError(
            f"steps must be >= 2 (one step gives NaN with the terminal stretch, model.md §6.9), got {steps}"
        )
    # a private scheduler: set_timesteps mutates state, and the pipeline's own one is shared
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(policy.pipe.scheduler.config)
    mu = (cond_tokens / 256) ** 0.5  # the layered pipeline's shift, not calculate_shift
    sigmas = np.linspace(1.0, 0, steps + 1)[:-1]
    timesteps, _ = retrieve_timesteps(scheduler, steps, policy.device, sigmas=sigmas, mu=mu)
    return timesteps, scheduler.sigmas.to(device=policy.device, dtype=torch.float32)


def predict_velocity(
    policy: Policy,
    x: torch.Tensor,
    timestep: torch.Tensor,
    image_latents: torch.Tensor,
    img_shapes: list[list[tuple[int, int, int]]],
    *,
    cfg_scale: float = 1.0,
    cfg_normalize: bool = False,
) -> torch.Tensor:
    """The transformer call of the pipeline's loop: condition frame appended, `additional_t_cond`
    0, output cropped to the generated tokens, optional true CFG. `timestep` is the scheduler's
    (0–1000) value, scalar or (B,). Returns the velocity in the weight dtype."""
    dtype = policy.dtype
    batch, n = x.shape[:2]
    common: dict[str, Any] = {
        "hidden_states": torch.cat([x.to(dtype), image_latents.to(dtype)], dim=1),
        "timestep": timestep.expand(batch).to(dtype) / 1000,
        "img_shapes": img_shapes,
        "additional_t_cond": torch.zeros(batch, dtype=torch.long, device=x.device),
        "return_dict": False,
    }

    def run(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        m = None if mask is None else mask.expand(batch, -1)
        out = policy.transformer(
            encoder_hidden_states=embeds.expand(batch, -1, -1), encoder_hidden_states_mask=m, **common
        )
        return out[0][:, :n]

    v = run(policy.prompt_embeds, policy.prompt_mask)
    if cfg_scale > 1:
        if policy.negative_embeds is None:
            raise ValueError(
                "cfg_scale > 1 needs the negative prompt embedding: load the policy with sampler.cfgScale > 1"
            )
        v_neg = run(policy.negative_embeds, policy.negative_mask)
        comb = v_neg + cfg_scale * (v - v_neg)
        if cfg_normalize:
            comb = comb * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        v = comb
    return v


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """G candidates of one image. Tensors on the policy device; K = trained (SDE-window) steps."""

    image_latents: torch.Tensor  # (B, Nc, 64)
    img_shapes: list[list[tuple[int, int, int]]]
    latents: torch.Tensor  # (B, K, N, 64) fp32, x before each trained step
    next_latents: torch.Tensor  # (B, K, N, 64) fp32, x after it
    log_probs: torch.Tensor  # (B, K) fp32
    means: torch.Tensor  # (B, K, N, 64) fp32
    stds: torch.Tensor  # (B, K) fp32, the transition std s_k
    timesteps: torch.Tensor  # (B, K) scheduler timesteps (0–1000)
    sigmas: torch.Tensor  # (B, K) fp32
    sigmas_next: torch.Tensor  # (B, K) fp32
    sigma_max: float
    final_latents: torch.Tensor  # (B, N, 64) fp32
    height: int
    width: int
    layers: int
    noise_level: float
    sde_type: SdeType
    step_indices: torch.Tensor  # (K,) long
    seeds: list[int]
    cfg_scale: float = 1.0
    cfg_normalize: bool = False
    source_size: tuple[int, int] = (0, 0)

    @property
    def size(self) -> int:
        return int(self.latents.shape[0])

    def select(self, index: Sequence[int] | torch.Tensor) -> Rollout:
        """The rollout of a subset of its samples (e.g. one training micro-batch)."""
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        out = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, torch.Tensor) and f.name != "step_indices":
                out[f.name] = val[idx]
            elif f.name in ("img_shapes", "seeds"):
                out[f.name] = [val[i] for i in idx]
        return replace(self, **out)


def sde_window(steps: int, window_size: int, window_start: int | None) -> list[int]:
    """Indices of the stochastic steps. Size 0 = every step but the last (the SD3 path)."""
    if window_size == 0:
        return list(range(steps - 1))
    if window_start is None:
        raise ValueError("window_start is required when sampler.sdeWindowSize > 0 (draw it from sdeWindowRange)")
    if not 0 <= window_start <= steps - window_size:
        raise ValueError(f"window_start {window_start} with window size {window_size} does not fit {steps} steps")
    return list(range(window_start, window_start + window_size))


@torch.no_grad()
def _denoise(
    policy: Policy,
    latents: torch.Tensor,
    cond: Condition,
    steps: int,
    *,
    window: list[int],
    noise_level: float,
    sde_type: SdeType,
    generators: list[torch.Generator],
    cfg_scale: float,
    cfg_normalize: bool,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]], torch.Tensor, torch.Tensor]:
    timesteps, sigmas = schedule(policy, steps, cond.image_latents.shape[1])
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("latents", "next", "logp", "mean", "std", "t")}
    x = latents.float()  # the running sample stays fp32 (the transformer sees it in the weight dtype)
    for i, t in enumerate(timesteps):
        v = predict_velocity(
            policy, x, t, cond.image_latents, cond.img_shapes, cfg_scale=cfg_scale, cfg_normalize=cfg_normalize
        )
        a = noise_level if i in window else 0.0
        x_next, logp, mean, std = sde_step_with_logprob(
            v, sigmas[i], sigmas[i + 1], x, a, generator=generators, sde_type=sde_type, sigma_max=sigmas[1]
        )
        if i in window:
            for key, val in zip(rec, (x, x_next, logp, mean, std, t.expand(x.shape[0])), strict=True):
                rec[key].append(val)
        x = x_next
    return x, rec, timesteps, sigmas


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same candidate on every device
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def sample_group(
    policy: Policy,
    image: np.ndarray | Image.Image,
    *,
    group_size: int,
    sampler: SamplerSpec,
    seeds: list[int],
    window_start: int | None,
    cfg_normalize: bool = False,
    latent_seed: int | None = None,
) -> Rollout:
    """Sample `group_size` candidates of one image in batched forwards and record the SDE window.

    Candidate b's initial noise and SDE noise come from `seeds[b]` alone, so it does not depend
    on the other candidates. With `sampler.sameLatent` all candidates share the initial noise of
    `latent_seed` (default `seeds[0]`; a caller holding only part of a group passes candidate 0's
    seed). Steps outside the window are deterministic Euler steps.
    """
    if len(seeds) != group_size:
        raise ValueError(f"sample_group: got {len(seeds)} seeds for group_size {group_size}")
    steps = sampler.train_steps
    window = sde_window(steps, sampler.sde_window_size, window_start)
    if sampler.sde_type == "cps" and steps - 1 in window:
        raise ValueError("sampler.sdeType cps cannot train the last step (its std is 0); move the SDE window earlier")
    gens = seed_generators(seeds)
    shared = seeds[0] if latent_seed is None else latent_seed
    init_gens = seed_generators([shared] * group_size) if sampler.same_latent else gens
    latents, cond = prepare(policy, image, resolution=sampler.resolution, layers=sampler.layers, generators=init_gens)
    final, rec, _, sigmas = _denoise(
        policy,
        latents,
        cond,
        steps,
        window=window,
        noise_level=sampler.noise_level,
        sde_type=sampler.sde_type,
        generators=gens,
        cfg_scale=sampler.cfg_scale,
        cfg_normalize=cfg_normalize,
    )
    b, k = group_size, len(window)
    idx = torch.tensor(window, dtype=torch.long, device=policy.device)
    return Rollout(
        image_latents=cond.image_latents,
        img_shapes=cond.img_shapes,
        latents=torch.stack(rec["latents"], dim=1),
        next_latents=torch.stack(rec["next"], dim=1),
        log_probs=torch.stack(rec["logp"], dim=1),
        means=torch.stack(rec["mean"], dim=1),
        stds=torch.stack(rec["std"], dim=1),
        timesteps=torch.stack(rec["t"], dim=1),
        sigmas=sigmas[idx].expand(b, k).contiguous(),
        sigmas_next=sigmas[idx + 1].expand(b, k).contiguous(),
        sigma_max=float(sigmas[1]),
        final_latents=final,
        height=cond.height,
        width=cond.width,
        layers=cond.layers,
        noise_level=sampler.noise_level,
        sde_type=sampler.sde_type,
        step_indices=idx,
        seeds=[int(s) for s in seeds],
        cfg_scale=sampler.cfg_scale,
        cfg_normalize=cfg_normalize,
        source_size=cond.source_size,
    )


def replay_log_prob(
    policy: Policy, rollout: Rollout, index: Sequence[int] | torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_prob (n,), mean (n,N,64), std (n,)) of the stored transition at trained step `k` for
    samples `index`, under the current policy, WITH gradient. On-policy with the same batch it
    equals `rollout.log_probs[index, k]` (same inputs, same fp32 math)."""
    sub = rollout.select(index)
    v = predict_velocity(
        policy,
        sub.latents[:, k],
        sub.timesteps[:, k],
        sub.image_latents,
        sub.img_shapes,
        cfg_scale=sub.cfg_scale,
        cfg_normalize=sub.cfg_normalize,
    )
    _, logp, mean, std = sde_step_with_logprob(
        v,
        sub.sigmas[:, k],
        sub.sigmas_next[:, k],
        sub.latents[:, k],
        sub.noise_level,
        prev_sample=sub.next_latents[:, k],
        sde_type=sub.sde_type,
        sigma_max=sub.sigma_max,
    )
    return logp, mean, std


# --------------------------------------------------------------------------------------------
# Decoding (deterministic decomposition for evaluation: inference.py)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def decode(
    policy: Policy, final_latents: torch.Tensor, rollout: Rollout | Condition, *, max_frames: int = 4
) -> list[list[np.ndarray]]:
    """Final latents (B, N, 64) → per sample, L RGBA uint8 layers (H×W×4) at the working size.

    Done here rather than by `__call__`, whose batch split is wrong for B > 1 (model.md §6.7):
    unpack, de-normalise, drop frame 0 (the composite), VAE-decode all B·L layer frames in
    batches of `max_frames` (bounds the decoder's activation memory at 640 px; on the CPU box larger
    chunks were slower: 16 frames at 640 px took 46 s in one chunk vs 33 s in chunks of 2).
    """
    pipe, vae = policy.pipe, policy.pipe.vae
    h, w, n_layers = rollout.height, rollout.width, rollout.layers
    lat = pipe._unpack_latents(final_latents, h, w, n_layers, pipe.vae_scale_factor).to(vae.dtype)
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
    lat = lat / inv_std + mean  # the pipeline's exact arithmetic, so decoded pixels match __call__
    batch, channels, _, lh, lw = lat.shape
    frames = lat[:, :, 1:].permute(0, 2, 1, 3, 4).reshape(-1, channels, 1, lh, lw)  # (B·L, C, 1, h, w)
    pixels = torch.cat(
        [vae.decode(chunk, return_dict=False)[0].squeeze(2) for chunk in frames.split(max_frames)]
    )  # frames are independent (one-frame causal video), so chunking does not change them
    arr = pipe.image_processor.postprocess(pixels.float(), output_type="np")  # (B·L,H,W,4) in [0,1]
    images = [(a * 255).round().astype(np.uint8) for a in arr]
    return [images[i * n_layers : (i + 1) * n_layers] for i in range(batch)]
