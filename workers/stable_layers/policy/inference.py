"""Deterministic decomposition: Euler or Heun on the pipeline's own sigma schedule, then decode.

Heun (2nd order) is the Stable-Layers release's sampler: for each step σ → σ', an Euler predictor
`x̃ = x + (σ' − σ)·v(x, σ)`, then the corrector `x + (σ' − σ)·(v(x, σ) + v(x̃, σ'))/2`; the last
step (σ' = 0) is a plain Euler step, so S steps cost 2S − 1 transformer calls (99 for 50).

diffusers' `FlowMatchHeunDiscreteScheduler` has the same step arithmetic but does not fit as the
sampler: its `set_timesteps` takes only a step count and a static `shift`, so it cannot build this
pipeline's schedule (custom `sigmas`, the layered `mu`, exponential dynamic shift, terminal
stretch to 0.02) and `retrieve_timesteps(..., sigmas=…)` refuses it; its `step` also casts the
running sample back to the weight dtype after every half step, where ours stays fp32 (as the
rollouts do). The test uses it, with its schedule overwritten, as the independent reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from stable_layers.layers import resize_layer
from stable_layers.policy.sampler import (
    Condition,
    decode,
    predict_velocity,
    prepare,
    schedule,
    seed_generators,
    working_size,
)
from stable_layers.policy.sde import sde_step_with_logprob

if TYPE_CHECKING:
    from PIL import Image

    from stable_layers.policy.model import Policy

__all__ = ["OdeMethod", "decompose", "ode_sample", "transformer_calls"]

OdeMethod = Literal["euler", "heun"]


def transformer_calls(steps: int, method: OdeMethod, cfg_scale: float = 1.0) -> int:
    """Transformer forwards of one S-step sample (true CFG doubles every call)."""
    calls = steps if method == "euler" else 2 * steps - 1
    return calls * (2 if cfg_scale > 1 else 1)


@torch.no_grad()
def ode_sample(
    policy: Policy,
    latents: torch.Tensor,
    cond: Condition,
    steps: int,
    *,
    method: OdeMethod = "euler",
    cfg_scale: float = 1.0,
    cfg_normalize: bool = False,
) -> torch.Tensor:
    """Integrate the flow from `latents` (σ = 1) to σ = 0; returns the final latents, fp32.

    `euler` is exactly the pipeline's scheduler step (and the rollouts' ODE steps)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    timesteps, sigmas = schedule(policy, steps, cond.image_latents.shape[1])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = predict_velocity(
            policy, x, t, cond.image_latents, cond.img_shapes, cfg_scale=cfg_scale, cfg_normalize=cfg_normalize
        )
        return v.float()

    x = latents.float()
    for i, t in enumerate(timesteps):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, t)
        x_euler = sde_step_with_logprob(v, s, s_next, x, 0.0)[0]
        if method == "heun" and bool(s_next > 0):
            # the corrector evaluates at σ' itself: the schedule's timesteps are σ·1000
            v_next = velocity(x_euler, s_next * 1000)
            x = x + (s_next - s) * (0.5 * (v + v_next))
        else:
            x = x_euler
    return x


def _merge(conds: list[Condition]) -> Condition:
    first = conds[0]
    return replace(
        first,
        image_latents=torch.cat([c.image_latents for c in conds]),
        img_shapes=[shape for c in conds for shape in c.img_shapes],
    )


@torch.no_grad()
def decompose(
    policy: Policy,
    images: Sequence[np.ndarray | Image.Image],
    *,
    layers: int,
    steps: int,
    seed: int,
    resolution: int,
    cfg_scale: float = 1.0,
    cfg_normalize: bool = False,
    method: OdeMethod = "euler",
    batch_size: int = 1,
    seeds: Sequence[int] | None = None,
) -> list[list[np.ndarray]]:
    """Deterministic decomposition: per image, `layers` RGBA uint8 layers (back to front) resized
    back to the input's size. Image i's initial noise comes from `seed + i` alone (the release
    seeds its inputs as 42 + index; `seeds` gives each image's seed instead), so results do not
    depend on `batch_size`, which batches consecutive images of the same working size into one
    forward (equal up to float rounding)."""
    from stable_layers.layers import as_rgba_array

    arrays = [as_rgba_array(im) for im in images]
    seeds = [seed + k for k in range(len(arrays))] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(arrays):
        raise ValueError(f"decompose: {len(seeds)} seeds for {len(arrays)} images")
    multiple = policy.pipe.vae_scale_factor * 2
    sizes = [working_size(a.shape[1], a.shape[0], resolution, multiple) for a in arrays]
    results: list[list[np.ndarray]] = []
    i = 0
    while i < len(arrays):
        j = i + 1
        while j < len(arrays) and j - i < batch_size and sizes[j] == sizes[i]:
            j += 1
        prepared = [
            prepare(policy, arrays[k], resolution=resolution, layers=layers, generators=seed_generators([seeds[k]]))
            for k in range(i, j)
        ]
        cond = _merge([c for _, c in prepared])
        latents = torch.cat([lat for lat, _ in prepared])
        final = ode_sample(
            policy, latents, cond, steps, method=method, cfg_scale=cfg_scale, cfg_normalize=cfg_normalize
        )
        for (_, c), decoded in zip(prepared, decode(policy, final, cond), strict=True):
            results.append([resize_layer(layer, c.source_size) for layer in decoded])
        i = j
    return results
