"""Pretraining, part 2: the layered transformer with the flow-matching objective.

A training sample is one design with L layers. Its targets are L+1 latent frames — frame 0 the
composite, frames 1..L the layers back to front — and its condition is the composite's latent,
packed and appended after the noisy frames exactly as `QwenImageLayeredPipeline` does, with
`img_shapes = [(1,h/2,w/2)] × (L+2)` (layer-3D RoPE: frames 0..L, condition at −1) and
`additional_t_cond = 0`. Rectified flow: x_σ = (1−σ)·x₀ + σ·ε, the transformer predicts ε − x₀,
which is the velocity the pipeline's Euler step `x + (σ_next − σ)·v` integrates.

A batch shares one L (the packed sequence length must match); the step's L is drawn per step.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2Tokenizer

PROMPT_TEMPLATE_PREFIX = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)
"""The layered pipeline's prompt template up to the user text; the pipeline drops its first
`prompt_template_encode_start_idx` (34) tokens, which for the real Qwen tokenizer is exactly this."""
TEMPLATE_DROP = 34


def compact_tokenizer() -> Qwen2Tokenizer:
    """`tiny.build_tokenizer()` plus 25 added tokens that make the template prefix exactly 34 tokens.

    The byte-level tiny tokenizer spells the system prompt as ~150 tokens, so after the pipeline
    drops the first 34 the "prompt" embedding is mostly system text (156 tokens for the default
    prompt): most of the transformer's sequence, and most of its cost. Chunking the system text into
    added tokens makes the drop line up with the template as it does for the real model, leaving the
    user prompt plus the assistant suffix (41 tokens), which halves the cost of every step.
    """
    from stable_layers.policy import build_tokenizer

    tok = build_tokenizer()
    start, end = len("<|im_start|>"), PROMPT_TEMPLATE_PREFIX.index("<|im_end|>")
    system = PROMPT_TEMPLATE_PREFIX[start:end]
    # 3 special tokens + chunks + "\n" + "user\n" (5 bytes) == 34
    n = TEMPLATE_DROP - 3 - 1 - len("user\n")
    bounds = [round(i * len(system) / n) for i in range(n + 1)]
    tok.add_tokens([system[a:b] for a, b in itertools.pairwise(bounds)])
    got = len(tok(PROMPT_TEMPLATE_PREFIX)["input_ids"])
    if got != TEMPLATE_DROP:  # pragma: no cover - would mean the tokenizers library changed matching
        raise RuntimeError(f"compact tokenizer spells the template prefix as {got} tokens, expected {TEMPLATE_DROP}")
    return tok


@dataclass
class LatentSet:
    """Normalised mode latents of designs, bucketed by layer count L.

    `frames[L]` is (N_L, L+1, C, h, w): frame 0 the composite (also the condition), then the layers.
    """

    frames: dict[int, torch.Tensor]

    @property
    def counts(self) -> dict[int, int]:
        return {k: int(v.shape[0]) for k, v in sorted(self.frames.items())}

    def __len__(self) -> int:
        return sum(self.counts.values())


@torch.no_grad()
def encode_designs(
    vae: AutoencoderKLQwenImage,
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    mean: torch.Tensor,
    std: torch.Tensor,
    chunk: int = 64,
) -> LatentSet:
    """Encode (composite, layers) pixel pairs (see `pretrain_vae.design_tensors`) with `mode()` and
    normalise with the VAE's latent stats, as `_encode_vae_image` does."""
    flat = [frame for comp, layers in samples for frame in (comp, *layers)]
    pixels = torch.stack(flat).unsqueeze(2)
    zs = [vae.encode(pixels[i : i + chunk]).latent_dist.mode() for i in range(0, len(pixels), chunk)]
    z = (torch.cat(zs).squeeze(2) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    buckets: dict[int, list[torch.Tensor]] = {}
    i = 0
    for _, layers in samples:
        n = 1 + len(layers)
        buckets.setdefault(len(layers), []).append(z[i : i + n])
        i += n
    return LatentSet({k: torch.stack(v) for k, v in buckets.items()})


def pack(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, C, h, w) → (B, F·(h/2)(w/2), 4C): the pipeline's `_pack_latents` (2×2 patches)."""
    from diffusers import QwenImageLayeredPipeline

    b, f, c, h, w = frames.shape
    return QwenImageLayeredPipeline._pack_latents(frames, b, c, h, w, f)


def shifted_sigmas(u: torch.Tensor, cond_tokens: int) -> torch.Tensor:
    """Map uniform-ish u in (0,1) through the pipeline's exponential time shift
    (mu = sqrt(cond_tokens / 256)), so training noise levels follow the sampler's schedule."""
    mu = math.sqrt(cond_tokens / 256)
    return math.exp(mu) / (math.exp(mu) + (1.0 / u - 1.0))


def sample_sigmas(batch: int, cond_tokens: int, generator: torch.Generator, logit_mean: float = 0.0) -> torch.Tensor:
    """Logit-normal(`logit_mean`, 1) timesteps (SD3 / Qwen-Image practice), then the sampler's
    time shift. `logit_mean` > 0 spends more of the training on high noise levels."""
    u = torch.sigmoid(torch.randn(batch, generator=generator) + logit_mean)
    return shifted_sigmas(u.clamp(1e-4, 1 - 1e-4), cond_tokens)


def flow_matching_loss(
    transformer: QwenImageTransformer2DModel,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared velocity error of one batch. `x0` (B, L+1, C, h, w) normalised latents with
    frame 0 the composite; `noise` like `x0`; `sigmas` (B,) in (0, 1); `weights` (B, L+1, 1, h, w)
    per latent pixel (`content_weights`) or None for the plain mean."""
    b, f, _, h, w = x0.shape
    s = sigmas.view(b, 1, 1, 1, 1)
    xt = pack((1 - s) * x0 + s * noise)
    target = pack(noise - x0)
    cond = pack(x0[:, :1])  # the composite's latent is the condition (mode latent, normalised)
    shapes = [[(1, h // 2, w // 2)] * (f + 1)] * b
    mask = None if prompt_mask is None else prompt_mask.expand(b, -1)
    out = transformer(
        hidden_states=torch.cat([xt, cond], dim=1),
        timestep=sigmas,
        encoder_hidden_states=prompt_embeds.expand(b, -1, -1),
        encoder_hidden_states_mask=mask,
        img_shapes=shapes,
        additional_t_cond=torch.zeros(b, dtype=torch.long),
        return_dict=False,
    )[0][:, : xt.shape[1]]
    err = (out.float() - target.float()).pow(2)
    if weights is None:
        return err.mean()
    w = pack(weights.expand_as(x0).float())
    return (err * w).sum() / w.sum()


@torch.no_grad()
def transparent_latent(
    vae: AutoencoderKLQwenImage, mean: torch.Tensor, std: torch.Tensor, resolution: int
) -> torch.Tensor:
    """The normalised mode latent (C, h, w) of a fully transparent frame (RGBA all −1): what an
    element frame holds wherever its element is absent."""
    frame = -torch.ones(1, 4, 1, resolution, resolution, dtype=vae.dtype)
    z = vae.encode(frame).latent_dist.mode().squeeze(2)[0].float()
    return (z - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def content_weights(x0: torch.Tensor, transparent: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """Loss weights (B, F, 1, h, w) for `flow_matching_loss`: `weight` on the latent pixels of the
    element frames (2..L) whose mean squared distance over channels from `transparent` exceeds
    `threshold` (normalised units), 1 everywhere else.

    Why: an element covers a small part of its frame, so under the plain mean the transparent
    remainder — easy to predict — dominates the element frames' loss, and the model learned to put
    colour blobs roughly in the right area. The composite and background frames are content
    everywhere and keep weight 1; since `flow_matching_loss` divides by the total weight, their
    share of the loss shrinks (the measured cost: blotchier backgrounds, docs/tiny-model.md)."""
    content = (x0.float() - transparent).pow(2).mean(dim=2, keepdim=True) > threshold
    content[:, :2] = False
    return 1.0 + (weight - 1.0) * content.float()


def step_batch(
    data: LatentSet, batch: int, seed: int, step: int, logit_mean: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of `step`: (x0, sigmas, noise), a pure function of (seed, step) so a resumed run
    sees exactly the batches an uninterrupted one would. L is drawn uniformly over the buckets."""
    rng = np.random.default_rng([seed, 2, step])
    keys = sorted(data.frames)
    bucket = data.frames[keys[int(rng.integers(len(keys)))]]
    idx = rng.choice(bucket.shape[0], size=batch, replace=bucket.shape[0] < batch)
    x0 = bucket[torch.from_numpy(np.sort(idx))]
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    cond_tokens = (x0.shape[-2] // 2) * (x0.shape[-1] // 2)
    sigmas = sample_sigmas(batch, cond_tokens, gen, logit_mean)
    noise = torch.randn(x0.shape, generator=gen)
    return x0, sigmas, noise


VAL_SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def validation_loss(
    transformer: QwenImageTransformer2DModel,
    data: LatentSet,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    seed: int = 0,
) -> float:
    """Flow-matching loss on held-out latents at fixed noise levels with fixed noise: a
    deterministic, comparable-over-time number (the training loss is noisy by construction)."""
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for _, x0 in sorted(data.frames.items()):
        noise = torch.randn(x0.shape, generator=gen)
        for s in VAL_SIGMAS:
            sig = torch.full((x0.shape[0],), s)
            total += float(flow_matching_loss(transformer, x0, sig, noise, prompt_embeds, prompt_mask)) * x0.shape[0]
            n += x0.shape[0]
    return total / max(n, 1)
