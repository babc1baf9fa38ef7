"""Pretraining, part 1: design frames as tensors, and the RGBA VAE as an autoencoder of layers.

`design_tensors` turns one synthetic design into what the pipeline would see (the composite, resized
exactly as `sampler.prepare` resizes an input) and what it should produce (the RGBA layers,
resized on premultiplied colour with `layers.resize_layer`). The VAE learns to reconstruct both kinds
of frame: opaque composites (the condition and frame 0) and mostly transparent element layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from stable_layers.data.synthetic import make_design
from stable_layers.layers import resize_layer

if TYPE_CHECKING:
    from diffusers import AutoencoderKLQwenImage
    from diffusers.image_processor import VaeImageProcessor


def image_processor() -> VaeImageProcessor:
    """The pipeline's image processor for the 8x VAE (`VaeImageProcessor(vae_scale_factor * 2)`)."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=16)


def design_tensors(
    seed: int, resolution: int, design_size: int, max_elements: int, processor: VaeImageProcessor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(composite (4,H,W), layers (L,4,H,W)) in [-1, 1] at `resolution` for design `seed`.

    The composite goes through the pipeline's own PIL resize + preprocess, so the condition matches
    inference; layers are resized on premultiplied colour, and their colour under fully transparent
    pixels is canonical black (what the generator emits), so the target is well defined there.
    """
    from PIL import Image

    design = make_design(seed, design_size, max_elements=max_elements)
    pil = processor.resize(Image.fromarray(design.image, "RGBA"), resolution, resolution)
    composite = processor.preprocess(pil, resolution, resolution)[0]
    layers = []
    for layer in design.layers:
        small = resize_layer(layer, (resolution, resolution)).copy()
        small[small[..., 3] == 0, :3] = 0
        layers.append(torch.from_numpy(small).permute(2, 0, 1).float() / 127.5 - 1.0)
    return composite.float(), torch.stack(layers)


def frame_batch(
    seeds: Sequence[int],
    count: int,
    resolution: int,
    design_size: int,
    max_elements: int,
    rng: np.random.Generator,
    processor: VaeImageProcessor,
) -> torch.Tensor:
    """`count` frames (count,4,1,H,W) drawn from the designs of `seeds`: their composites and
    layers, chosen uniformly by `rng` (the caller seeds it per step, which makes resume exact)."""
    frames: list[torch.Tensor] = []
    for s in seeds:
        comp, layers = design_tensors(int(s), resolution, design_size, max_elements, processor)
        frames.append(comp)
        frames.extend(layers)
    pick = rng.choice(len(frames), size=min(count, len(frames)), replace=False)
    return torch.stack([frames[i] for i in sorted(pick)]).unsqueeze(2)


def decode_unclamped(vae: AutoencoderKLQwenImage, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z)` without its final clamp to [-1, 1], for single-frame latents (B,C,1,h,w).

    The clamp has zero gradient outside [-1, 1], and most RGBA targets sit exactly on the bounds
    (alpha 0 or 255, black under transparency): a pixel that overshoots the wrong way never
    recovers, which stalled reconstruction at ~15 dB. Inference keeps the clamp (public `decode`).
    """
    if z.shape[2] != 1:
        raise ValueError(f"decode_unclamped takes single-frame latents, got {z.shape[2]} frames")
    vae.clear_cache()
    vae._conv_idx = [0]
    out = vae.decoder(vae.post_quant_conv(z), feat_cache=vae._feat_map, feat_idx=vae._conv_idx)
    vae.clear_cache()
    return out


def bounded_l1(rec: torch.Tensor, x: torch.Tensor, mse_weight: float = 0.0, margin: float = 1e-3) -> torch.Tensor:
    """L1 that lets the unclamped output overshoot *outward* where the target sits on a bound.

    Targets at -1 (alpha 0, black under transparency) or +1 (opaque) only penalise errors towards
    the inside; inference clamps, so overshooting gives exact 0/255 alpha there. That keeps the
    decoded layers free of the faint alpha haze that would make every layer "overlap" every other
    one under LayerD's hard (alpha > 0) masks.
    """
    err = rec - x
    err = torch.where(x <= -1 + margin, err.clamp_min(0), err)
    err = torch.where(x >= 1 - margin, err.clamp_max(0), err)
    return err.abs().mean() + mse_weight * err.pow(2).mean()


def vae_loss(
    vae: AutoencoderKLQwenImage,
    x: torch.Tensor,
    generator: torch.Generator,
    kl_weight: float,
    latent_noise: float,
    mse_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bounded L1 reconstruction of RGBA frames from the mode latent plus `latent_noise`·ε, and a small KL.

    The pipeline only ever uses the mode latent (`sample_mode="argmax"`), so the VAE is trained as
    an autoencoder of it. Decoding through the posterior sample instead starts with unit-variance
    noise on every latent, which a few hundred CPU steps never shrink (reconstruction stalled at
    ~15 dB); a small fixed noise keeps the decoder tolerant of the transformer's imperfect latents.
    The KL (mean over latents) only keeps the latent scale bounded.
    """
    posterior = vae.encode(x).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=generator, dtype=x.dtype)
    z = posterior.mean + latent_noise * eps
    rec = decode_unclamped(vae, z)
    l1 = bounded_l1(rec, x, mse_weight)
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    loss = l1 + kl_weight * kl
    return loss, {"l1": l1.item(), "kl": kl.item()}


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKLQwenImage, x: torch.Tensor) -> float:
    """PSNR (dB, RGBA in [0,1]) of mode-latent reconstructions, the path the pipeline takes."""
    z = vae.encode(x).latent_dist.mode()
    rec = vae.decode(z).sample.clamp(-1, 1)
    mse = float(((rec - x) / 2).pow(2).mean())
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def latent_stats(vae: AutoencoderKLQwenImage, frames: torch.Tensor, chunk: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the mode latents of `frames` (N,4,1,H,W): the
    `latents_mean`/`latents_std` the pipeline normalises with."""
    zs = [vae.encode(frames[i : i + chunk]).latent_dist.mode() for i in range(0, len(frames), chunk)]
    z = torch.cat(zs).transpose(0, 1).reshape(zs[0].shape[1], -1)  # (C, everything else)
    std = z.std(dim=1).clamp_min(1e-3)
    return [round(float(v), 6) for v in z.mean(dim=1)], [round(float(v), 6) for v in std]
