"""The GRPO update of Flow-GRPO, as pure tensor math (no model, no I/O).

Three pieces, each a pure function the training loop composes (shared/docs/method.md §1.3, §1.5):

* `compute_advantages` — group-relative advantages keyed by input image id (pitfall P1: the prompt
  is fixed, so the prompt cannot be the group key), normalised by the group's or the iteration's
  reward std plus 1e-4, clipped to ±adv_clip_max. Samples whose advantage is exactly 0 (every
  member of a zero-variance group, and a member that sits exactly on its group mean) carry no
  policy gradient and are dropped, as flow_grpo does; `zero_std_ratio` counts the groups with
  identical rewards (what the grid calibration of the reward is meant to push down).
* `surrogate` — per-sample clipped PPO surrogate of one trained SDE step, with the ratio either
  plain (`exp(log π_θ − log π_old)`) or RatioNorm'd (GRPO-Guard), plus the KL to the
  adapter-disabled reference. Everything is computed in fp32 whatever the model dtype.
* `summarize` — the diagnostics of one optimizer step (approx_kl, clip fractions, ratio and
  log-ratio statistics) from the per-sample outputs of its micro-batches.

RatioNorm (method.md §1.5). With Δμ = μ_θ − μ_old and ε the realised rollout noise,
`log r = mean_d(ε·Δμ)/s − mean_d(Δμ²)/(2s²)`: the second term biases the ratio below 1, more at
low-noise steps. GRPO-Guard adds back the bias `b = mean_d(Δμ²)/(2s²)`, multiplies by the step
std `s` and reweights the loss by `1/Δt`, which leaves `log r_RN = mean_d(ε·Δμ)`: zero-mean under
the rollout noise and on a step-independent scale. Variants:

* `per_sample` — b and s per sample, fp32 (what the math says).
* `batch_scalar` — the reference code's behaviour: its reduction over an empty dim tuple averages
  b over the whole micro-batch, and s and Δt are batch means. Kept only to reproduce it.
* `dimension_aware` (default) — per_sample, then `log r_RN · sqrt(D / D_ref)`. Because
  `std(mean_d(ε·Δμ)) = rms(Δμ)/sqrt(D)`, the RatioNorm'd log-ratio of a 640 px, 4-layer latent
  (D ≈ 5.1e5) is ~2.8x narrower than at SD3.5-M 512 px (D_ref = 65 536) where GRPO-Guard tuned
  its clip ranges, and it changes with every resolution and layer count. Rescaling by sqrt(D/D_ref)
  makes the spread depend on rms(Δμ) only, so one clip range means the same thing for any L and
  aspect ratio. D is per sample, so mixed sizes in one micro-batch stay correct. This is our
  reading of Stable-Layers' unpublished "stabilisation for high-dimensional latent sequences".

The bias b is not detached: then `log r_RN = mean_d(ε·Δμ)` holds as a function of θ, so its
gradient is exactly the noise-correlation term (detaching would add `−mean_d(Δμ·∇μ)/s`).

KL (method.md §1.3 D). The two transition Gaussians share the std s, so the KL is closed-form on
the means. `kl_form="per_element"` (default) is the exact KL divided by D,
`mean_d(μ_θ − μ_ref)²/(2s²)` — the same per-element convention as the log-probs.
`kl_form="reference"` reproduces flow_grpo, which divides by 2σ_t² instead of 2s² (= 2σ_t²Δt),
i.e. the per-element KL times Δt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

ADV_STD_EPS = 1e-4
"""Added to the reward std before dividing (flow_grpo's stat tracker)."""

RatioNormVariant = Literal["per_sample", "batch_scalar", "dimension_aware"]
KLForm = Literal["per_element", "reference"]


@dataclass(frozen=True)
class Advantages:
    """Advantages of one iteration's samples, in the order the rewards were given."""

    values: torch.Tensor
    """(N,) fp32, clipped."""
    keep: torch.Tensor
    """(N,) bool: samples that carry a policy gradient (advantage != 0)."""
    reward_mean: float
    reward_std: float
    group_std_mean: float
    """Mean over groups of the within-group reward std."""
    zero_std_ratio: float
    """Fraction of groups whose rewards are all identical."""
    num_groups: int


def compute_advantages(
    rewards: Sequence[float] | torch.Tensor,
    keys: Sequence[str],
    *,
    std_mode: Literal["group", "global"] = "group",
    adv_clip_max: float = 5.0,
) -> Advantages:
    """Group-relative advantages `(R − mean_g) / (std + 1e-4)`, clipped, keyed by `keys`.

    `keys[i]` is the group (input image id) of sample i; group members may come in any order and
    from any rank. Stds are population stds (ddof 0), as numpy's default in flow_grpo.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if r.numel() != len(keys):
        raise ValueError(f"got {r.numel()} rewards but {len(keys)} group keys")
    if r.numel() == 0:
        raise ValueError("compute_advantages needs at least one reward")
    if not torch.isfinite(r).all():
        raise ValueError("rewards must be finite; a scorer returned NaN or inf")
    index: dict[str, int] = {}
    group_of = torch.tensor([index.setdefault(k, len(index)) for k in keys])
    n_groups = len(index)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_of, torch.ones_like(r))
    means = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_of, r) / counts
    centred = r - means[group_of]
    group_var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_of, centred**2) / counts
    group_std = group_var.sqrt()
    # "Identical rewards" is exact equality, as in flow_grpo: a tiny but real spread still teaches.
    g_min = torch.full((n_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, group_of, r, "amin")
    g_max = torch.full((n_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, group_of, r, "amax")
    zero_std = g_min == g_max
    std = group_std[group_of] if std_mode == "group" else r.std(unbiased=False).expand_as(r)
    adv = (centred / (std + ADV_STD_EPS)).clamp(-adv_clip_max, adv_clip_max)
    adv[zero_std[group_of]] = 0.0  # centred is 0 there already; make it exact against rounding
    return Advantages(
        values=adv.float(),
        keep=adv != 0,
        reward_mean=float(r.mean()),
        reward_std=float(r.std(unbiased=False)),
        group_std_mean=float(group_std.mean()),
        zero_std_ratio=float(zero_std.double().mean()),
        num_groups=n_groups,
    )


@dataclass(frozen=True)
class RatioConfig:
    """The knobs of `surrogate`; `from_spec` reads them from `RunSpec.grpo`."""

    clip_range: float = 1e-4
    ratio_norm: bool = True
    variant: RatioNormVariant = "dimension_aware"
    dim_ref: int = 65536
    log_ratio_clamp: float = 20.0
    kl_beta: float = 0.0
    kl_form: KLForm = "per_element"

    @classmethod
    def from_spec(cls, grpo: object) -> RatioConfig:
        return cls(
            clip_range=grpo.clip_range,  # type: ignore[attr-defined]
            ratio_norm=grpo.ratio_norm,  # type: ignore[attr-defined]
            variant=grpo.ratio_norm_variant,  # type: ignore[attr-defined]
            dim_ref=grpo.ratio_norm_dim_ref,  # type: ignore[attr-defined]
            log_ratio_clamp=grpo.log_ratio_clamp,  # type: ignore[attr-defined]
            kl_beta=grpo.kl_beta,  # type: ignore[attr-defined]
            kl_form=getattr(grpo, "kl_form", "per_element"),
        )


@dataclass
class SurrogateOutput:
    """Per-sample results of one trained step of one micro-batch. Only `loss` carries a graph."""

    loss: torch.Tensor
    """(B,) policy loss + β·KL; average (or weight) it yourself before backward."""
    policy_loss: torch.Tensor
    kl: torch.Tensor
    ratio: torch.Tensor
    """(B,) the ratio the surrogate clipped (RatioNorm'd if enabled)."""
    log_ratio: torch.Tensor
    """(B,) log of `ratio` after the clamp."""
    raw_log_ratio: torch.Tensor
    """(B,) log π_θ − log π_old, for approx_kl."""


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def surrogate(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    cfg: RatioConfig,
    *,
    mean: torch.Tensor | None = None,
    old_mean: torch.Tensor | None = None,
    ref_mean: torch.Tensor | None = None,
    step_std: torch.Tensor | None = None,
    dt: torch.Tensor | None = None,
) -> SurrogateOutput:
    """Clipped surrogate `max(−A·r, −A·clip(r, 1−ε, 1+ε))` per sample of one trained step.

    Shapes: `log_prob`, `old_log_prob`, `advantages`, `step_std` (the std s of the transition
    Gaussian, σ_t·sqrt(Δt) for the flow SDE) and `dt` (t_k − t_{k+1} > 0) are (B,); `mean`,
    `old_mean`, `ref_mean` are (B, ...) transition means. RatioNorm needs mean/old_mean/step_std/dt;
    the KL needs mean/ref_mean/step_std (and dt for the reference form).
    """
    lp = log_prob.float()
    raw = lp - old_log_prob.float()
    adv = advantages.float().to(lp.device)
    weight: torch.Tensor | float = 1.0
    if cfg.ratio_norm:
        if mean is None or old_mean is None or step_std is None or dt is None:
            raise ValueError("RatioNorm needs mean, old_mean, step_std and dt")
        s = step_std.float()
        dmu2 = _per_sample_mean((mean.float() - old_mean.float()) ** 2)
        if cfg.variant == "batch_scalar":
            s_bar = s.mean()
            log_ratio = (raw + dmu2.mean() / (2 * s_bar**2)) * s_bar
            weight = 1.0 / dt.float().mean()
        else:
            log_ratio = (raw + dmu2 / (2 * s**2)) * s
            weight = 1.0 / dt.float()
            if cfg.variant == "dimension_aware":
                dim = mean[0].numel()
                log_ratio = log_ratio * math.sqrt(dim / cfg.dim_ref)
    else:
        log_ratio = raw
    log_ratio = log_ratio.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
    policy_loss = torch.maximum(unclipped, clipped) * weight
    kl = torch.zeros_like(policy_loss)
    if cfg.kl_beta > 0:
        if mean is None or ref_mean is None or step_std is None:
            raise ValueError("the KL term needs mean, ref_mean and step_std")
        kl = _per_sample_mean((mean.float() - ref_mean.float()) ** 2) / (2 * step_std.float() ** 2)
        if cfg.kl_form == "reference":
            if dt is None:
                raise ValueError("kl_form 'reference' needs dt")
            kl = kl * dt.float()
    loss = policy_loss + cfg.kl_beta * kl
    return SurrogateOutput(
        loss=loss,
        policy_loss=policy_loss.detach(),
        kl=kl.detach(),
        ratio=ratio.detach(),
        log_ratio=log_ratio.detach(),
        raw_log_ratio=raw.detach(),
    )


def summarize(outputs: Sequence[SurrogateOutput], clip_range: float) -> dict[str, float]:
    """Diagnostics of one optimizer step over all its (sample, trained step) pairs.

    `approx_kl = ½·mean(log π_θ − log π_old)²` on the raw log-ratio (the policy's actual drift);
    the clip fractions and ratio statistics on the ratio the surrogate clipped.
    """
    if not outputs:
        return {}
    ratio = torch.cat([o.ratio for o in outputs]).double()
    log_ratio = torch.cat([o.log_ratio for o in outputs]).double()
    raw = torch.cat([o.raw_log_ratio for o in outputs]).double()
    gt = ratio > 1.0 + clip_range
    lt = ratio < 1.0 - clip_range
    return {
        "policy_loss": float(torch.cat([o.policy_loss for o in outputs]).double().mean()),
        "kl": float(torch.cat([o.kl for o in outputs]).double().mean()),
        "approx_kl": float(0.5 * (raw**2).mean()),
        "clipfrac": float((gt | lt).double().mean()),
        "clipfrac_gt_one": float(gt.double().mean()),
        "clipfrac_lt_one": float(lt.double().mean()),
        "ratio_mean": float(ratio.mean()),
        "ratio_std": float(ratio.std(unbiased=False)),
        "log_ratio_std": float(log_ratio.std(unbiased=False)),
        "raw_log_ratio_mean": float(raw.mean()),
    }
