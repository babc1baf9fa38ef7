"""The Flow-GRPO per-step policy: one SDE step and the Gaussian log-density of its result (pure).

Conventions (shared/docs/method.md §1.2): sigma is flow time (1 = noise, 0 = data); all math is
fp32; a log-prob is the per-element Gaussian log-density averaged over every non-batch dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

SdeType = Literal["flow", "cps"]
Generators = torch.Generator | Sequence[torch.Generator] | None
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Scalar → 0-d fp32 tensor; (B,) → (B, 1, ..., 1) broadcastable against `like`."""
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim == 1 and t.shape[0] == like.shape[0]:
        return t.view(-1, *([1] * (like.ndim - 1)))
    raise ValueError(f"sigma must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}")


def _randn(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal noise. A list of generators draws each sample from its own generator (so a
    candidate's noise does not depend on the rest of its batch); generators are used where they
    live (CPU generators give the same noise on every device)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    draws = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
    return torch.stack(draws).to(device)


def sde_step_with_logprob(
    model_output: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generators = None,
    *,
    sde_type: SdeType = "flow",
    sigma_max: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stochastic step from `sigma` to `sigma_next` and the Gaussian log-density of its result.

    Returns `(prev_sample, log_prob, prev_sample_mean, std_dev)`, all fp32: `prev_sample` and
    `prev_sample_mean` shaped like `sample`; `log_prob` (B,) = mean over non-batch dims of
    `-(x' − μ)²/(2s²) − log s − ½ log 2π`; `std_dev` (B,) = s, the transition's standard deviation.
    With `prev_sample` given it is scored, not sampled (replay). `sigma`/`sigma_next` are scalars
    or per-sample (B,) tensors.

    `flow` (Flow-GRPO): s = a·sqrt(σ/(1−σ))·sqrt(σ−σ'); at σ = 1 the 1/(1−σ) factor uses
    `sigma_max` (the schedule's second sigma, as the reference does) instead of dividing by zero.
    `cps` (coefficients-preserving): s = σ'·sin(aπ/2), μ = x̂0(1−σ') + x̂1·sqrt(σ'² − s²), scored with
    the properly normalised Gaussian density (the reference code drops the normaliser).
    `noise_level = 0` is exactly the Euler step `x + (σ' − σ)·v` of the pipeline's scheduler; its
    log-prob is NaN (a point mass has no density — never train on it) and `std_dev` is 0.
    """
    v = model_output.float()
    x = sample.float()
    s = _per_sample(sigma, x)
    s_next = _per_sample(sigma_next, x)
    dt = s_next - s
    batch = x.shape[0]
    if noise_level == 0:
        mean = x + dt * v
        prev = mean if prev_sample is None else prev_sample.float()
        nan = torch.full((batch,), float("nan"), device=x.device)
        return prev, nan, mean, torch.zeros(batch, device=x.device)
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if sde_type == "flow":
        at_one = s >= 1
        if bool(at_one.any()):
            if sigma_max is None:
                raise ValueError("sigma == 1 needs sigma_max (the schedule's second sigma) for the 1/(1-sigma) term")
            s_div = torch.where(at_one, _per_sample(sigma_max, x), s)
        else:
            s_div = s
        std_t = torch.sqrt(s / (1 - s_div)) * noise_level
        mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * torch.sqrt(-dt)
    elif sde_type == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0 = x - s * v
        x1 = x + (1 - s) * v
        mean = x0 * (1 - s_next) + x1 * torch.sqrt(s_next**2 - std**2)
    else:
        raise ValueError(f"sde_type must be 'flow' or 'cps', got {sde_type!r}")
    if bool((std <= 0).any()):
        raise ValueError(
            "the SDE step has zero noise (sigma_next = 0 with cps, or sigma = sigma_next); use an ODE step"
        )
    prev = mean + std * _randn(mean.shape, generator, mean.device) if prev_sample is None else prev_sample.float()
    # the sample is data, not a function of θ: only the mean carries gradient
    log_prob = -((prev.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    return prev, log_prob, mean, std.reshape(-1).expand(batch).contiguous()
