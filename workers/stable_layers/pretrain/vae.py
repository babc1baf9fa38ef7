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

from stable_layers.data import make_design
from stable_layers.layers import canonical_order, resize_layer

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


def canonical_tensor_order(layers: torch.Tensor) -> list[int]:
    """`layers.canonical_order` of a (L,4,H,W) stack in [-1, 1] (as `design_tensors` returns it)."""
    u8 = ((layers.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return canonical_order(list(u8))


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


def _bounded_error(rec: torch.Tensor, x: torch.Tensor, margin: float = 1e-3) -> torch.Tensor:
    """`rec - x`, with errors *outward* of a bound ignored where the target sits on it.

    Targets at -1 (alpha 0, black under transparency) or +1 (opaque) only penalise errors towards
    the inside; inference clamps, so overshooting gives exact 0/255 alpha there. That keeps the
    decoded layers free of the faint alpha haze that would make every layer "overlap" every other
    one under LayerD's hard (alpha > 0) masks.
    """
    err = rec - x
    err = torch.where(x <= -1 + margin, err.clamp_min(0), err)
    return torch.where(x >= 1 - margin, err.clamp_max(0), err)


def layer_reconstruction_loss(
    rec: torch.Tensor, x: torch.Tensor, mse_weight: float, transparent_rgb_weight: float
) -> torch.Tensor:
    """Bounded L1 on alpha; bounded L1 + `mse_weight`·MSE on colour, weighted by where colour counts.

    Colour under fully transparent pixels is only the canonical black, so it gets
    `transparent_rgb_weight` (not 0: the decoded colour there still feeds premultiplied resizes);
    where the ground truth is visible it gets weight 1. Without that weighting most of an element
    layer's colour loss is its transparent area, and the VAE learned colour about a third as fast.
    The MSE term punishes the large colour errors of the colour-shrunk decodes harder than L1 does
    (measured in docs/tiny-model.md: colour L1 0.155 → 0.098 on held-out frames at 800 steps).
    """
    err = _bounded_error(rec, x)
    visible = (x[:, 3:4] > -1 + 1e-3).to(rec.dtype)
    w = visible * (1.0 - transparent_rgb_weight) + transparent_rgb_weight
    norm = w.sum() * 3
    rgb = err[:, :3]
    colour = (rgb.abs() * w).sum() / norm + mse_weight * (rgb.pow(2) * w).sum() / norm
    return colour + err[:, 3:4].abs().mean()


def apply_latent_path_gain(vae: AutoencoderKLQwenImage, gain: float) -> None:
    """Zero every bias and scale the convolutions around the latent by `gain` (at initialisation).

    With the default init the latents are tiny (|z| ≈ 0.14) next to the decoder's biases and its
    zero-padding border patterns, so the decoder first learns an input-independent mean image whose
    magnitude, after the per-pixel RMS norms, drowns the content: colour never gets through at lr
    ≥ 1e-3. A larger latent path keeps the content in the residual stream (docs/tiny-model.md).
    """
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("bias"):
                param.zero_()
        for conv in (vae.encoder.conv_out, vae.quant_conv, vae.post_quant_conv, vae.decoder.conv_in):
            conv.weight.mul_(gain)


def vae_loss(
    vae: AutoencoderKLQwenImage,
    x: torch.Tensor,
    generator: torch.Generator,
    kl_weight: float,
    latent_noise: float,
    mse_weight: float = 0.0,
    transparent_rgb_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`layer_reconstruction_loss` of RGBA frames decoded from the mode latent plus
    `latent_noise`·ε, and a small KL.

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
    rec_loss = layer_reconstruction_loss(rec, x, mse_weight, transparent_rgb_weight)
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    loss = rec_loss + kl_weight * kl
    return loss, {"rec": rec_loss.item(), "kl": kl.item()}


@torch.no_grad()
def reconstruction_metrics(vae: AutoencoderKLQwenImage, x: torch.Tensor) -> dict[str, float]:
    """Mode-latent reconstructions (the pipeline's path), decoded to uint8 like the pipeline's output:
    `val_psnr` (dB, RGBA in [0,1]), `val_colour_l1` (mean |RGB error| where the ground truth is
    visible, the part of the error LayerD's RGB L1 sees) and `val_alpha_iou` (alpha > 0 masks, per
    frame). PSNR alone hid that the VAE learned shapes but barely any colour."""
    z = vae.encode(x).latent_dist.mode()
    rec = ((vae.decode(z).sample.clamp(-1, 1) + 1) * 127.5).round() / 255
    ref = (x + 1) / 2
    mse = float((rec - ref).pow(2).mean())
    visible = ref[:, 3:4] > 0
    colour = float(((rec[:, :3] - ref[:, :3]).abs() * visible).sum() / (visible.sum().clamp_min(1) * 3))
    pred = rec[:, 3:4] > 0
    inter = (pred & visible).flatten(1).sum(1).float()
    union = (pred | visible).flatten(1).sum(1).float()
    iou = float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
    return {"val_psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))), "val_colour_l1": colour, "val_alpha_iou": iou}


@torch.no_grad()
def latent_stats(vae: AutoencoderKLQwenImage, frames: torch.Tensor, chunk: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the mode latents of `frames` (N,4,1,H,W): the
    `latents_mean`/`latents_std` the pipeline normalises with."""
    zs = [vae.encode(frames[i : i + chunk]).latent_dist.mode() for i in range(0, len(frames), chunk)]
    z = torch.cat(zs).transpose(0, 1).reshape(zs[0].shape[1], -1)  # (C, everything else)
    std = z.std(dim=1).clamp_min(1e-3)
    return [round(float(v), 6) for v in z.mean(dim=1)], [round(float(v), 6) for v in std]
