"""GRPO math: advantages by hand, zero-std drop, clipping, RatioNorm variants, KL, diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from stable_layers.spec import GRPOSpec
from stable_layers.trainer.grpo import RatioConfig, compute_advantages, summarize, surrogate


def test_group_advantages_by_hand():
    rewards = [1.0, 3.0, 5.0, 5.0, 2.0, 2.0, 0.0, 4.0]
    keys = ["a", "a", "b", "b", "c", "c", "d", "d"]  # b and c have identical rewards
    adv = compute_advantages(rewards, keys, std_mode="group", adv_clip_max=5.0)
    # group a: mean 2, population std 1 -> (−1, +1) / (1 + 1e-4); group d: mean 2, std 2
    want = torch.tensor([-1 / 1.0001, 1 / 1.0001, 0, 0, 0, 0, -2 / 2.0001, 2 / 2.0001])
    torch.testing.assert_close(adv.values, want.float())
    assert adv.keep.tolist() == [True, True, False, False, False, False, True, True]
    assert adv.zero_std_ratio == pytest.approx(0.5)
    assert adv.num_groups == 4
    assert adv.group_std_mean == pytest.approx((1 + 0 + 0 + 2) / 4)
    assert adv.reward_mean == pytest.approx(sum(rewards) / 8)


def test_groups_keyed_by_id_in_any_order():
    # the same rewards, interleaved as they arrive from two ranks
    a = compute_advantages([1.0, 0.0, 3.0, 4.0], ["x", "y", "x", "y"])
    b = compute_advantages([1.0, 3.0, 0.0, 4.0], ["x", "x", "y", "y"])
    torch.testing.assert_close(a.values[[0, 2, 1, 3]], b.values)


def test_global_std_and_clipping():
    rewards = [0.0, 0.0, 0.0, 10.0, 1.0, 2.0]
    keys = ["a", "a", "a", "a", "b", "b"]
    g = compute_advantages(rewards, keys, std_mode="global", adv_clip_max=1.0)
    std = torch.tensor(rewards, dtype=torch.float64).std(unbiased=False).item()
    want = [-2.5 / (std + 1e-4)] * 3 + [7.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)]
    want = [max(-1.0, min(1.0, w)) for w in want]
    torch.testing.assert_close(g.values, torch.tensor(want, dtype=torch.float32))
    assert g.values.abs().max() == pytest.approx(1.0)  # clipped


def test_member_on_its_group_mean_is_dropped_but_group_not_zero_std():
    adv = compute_advantages([0.0, 1.0, 2.0], ["g"] * 3)
    assert adv.keep.tolist() == [True, False, True]
    assert adv.zero_std_ratio == 0.0


def test_bad_rewards_rejected():
    with pytest.raises(ValueError, match="finite"):
        compute_advantages([1.0, float("nan")], ["a", "a"])
    with pytest.raises(ValueError, match="group keys"):
        compute_advantages([1.0, 2.0], ["a"])


def _plain(clip: float = 0.1) -> RatioConfig:
    return RatioConfig(clip_range=clip, ratio_norm=False, log_ratio_clamp=20.0)


def test_clipped_surrogate_by_hand():
    # ratios e^0.2 > 1+ε and e^-0.2 < 1−ε with positive and negative advantages
    lr = torch.tensor([0.2, 0.2, -0.2, -0.2], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = surrogate(lr, torch.zeros(4), adv, _plain(0.1))
    r = math.exp(0.2)
    # A>0,r>1+ε: clipped (−A(1+ε) > −A r); A<0,r>1+ε: unclipped; A>0,r<1−ε: unclipped; A<0,r<1−ε: clipped
    want = torch.tensor([-1.1, r, -1 / r, 0.9])
    torch.testing.assert_close(out.loss.detach(), want)
    out.loss.sum().backward()
    # clipped entries have no gradient; unclipped ones d(−A r)/d lr = −A r
    torch.testing.assert_close(lr.grad, torch.tensor([0.0, r, -1 / r, 0.0]))
    d = summarize([out], 0.1)
    assert d["clipfrac"] == 1.0 and d["clipfrac_gt_one"] == 0.5 and d["clipfrac_lt_one"] == 0.5
    assert d["approx_kl"] == pytest.approx(0.5 * 0.04, rel=1e-6)


def test_log_ratio_clamp_keeps_ratio_finite():
    out = surrogate(torch.tensor([500.0, -500.0]), torch.zeros(2), torch.ones(2), _plain())
    assert torch.isfinite(out.ratio).all()
    assert out.log_ratio.tolist() == [20.0, -20.0]


def _gaussian_step(d: int, s: float, delta: float, seed: int = 0):
    """A rollout step x' = μ_old + s·ε and a policy whose mean moved by `delta` everywhere."""
    g = torch.Generator().manual_seed(seed)
    mu_old = torch.randn(2, d, generator=g)
    eps = torch.randn(2, d, generator=g)
    x_next = mu_old + s * eps
    mu = mu_old + delta

    def logp(m):
        return (-((x_next - m) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)).mean(1)

    return mu, mu_old, eps, logp(mu), logp(mu_old)


@pytest.mark.parametrize("variant", ["per_sample", "dimension_aware"])
def test_ratio_norm_removes_bias_and_scale(variant):
    s, dt, d = 0.05, 0.1, 4096
    mu, mu_old, eps, lp, old_lp = _gaussian_step(d, s, delta=0.01)
    cfg = RatioConfig(clip_range=1e-4, ratio_norm=True, variant=variant, dim_ref=1024)
    out = surrogate(lp, old_lp, torch.ones(2), cfg, mean=mu, old_mean=mu_old,
                    step_std=torch.full((2,), s), dt=torch.full((2,), dt))  # fmt: skip
    want = (eps * (mu - mu_old)).mean(1)  # log r_RN = mean_d(ε·Δμ): no −Δμ²/2s² bias, no 1/s
    if variant == "dimension_aware":
        want = want * math.sqrt(d / 1024)
    torch.testing.assert_close(out.log_ratio, want, rtol=1e-4, atol=1e-7)
    # the plain log-ratio carries the negative bias −mean(Δμ²)/(2s²) = −0.02
    assert (out.raw_log_ratio - (eps * 0.01).mean(1) / s).mean().item() == pytest.approx(-0.02, rel=1e-3)


def test_dimension_aware_spread_does_not_depend_on_latent_size():
    stds = {}
    for d in (1024, 16384):
        logs = []
        for seed in range(200):
            mu, mu_old, _, lp, old_lp = _gaussian_step(d, 0.1, delta=0.01, seed=seed)
            cfg = RatioConfig(ratio_norm=True, variant="dimension_aware", dim_ref=1024)
            o = surrogate(lp, old_lp, torch.ones(2), cfg, mean=mu, old_mean=mu_old,
                          step_std=torch.full((2,), 0.1), dt=torch.full((2,), 0.1))  # fmt: skip
            logs.append(o.log_ratio)
        stds[d] = torch.cat(logs).std().item()
    # per_sample would shrink by sqrt(16) = 4; dimension-aware keeps it (≈ 0.01 = rms Δμ / sqrt(D_ref)·…)
    assert stds[16384] / stds[1024] == pytest.approx(1.0, abs=0.15)


def test_batch_scalar_variant_reproduces_reference_quirk():
    s = torch.tensor([0.05, 0.2])
    dt = torch.tensor([0.1, 0.3])
    g = torch.Generator().manual_seed(3)
    mu_old = torch.randn(2, 64, generator=g)
    mu = mu_old + torch.tensor([[0.01], [0.03]])
    lp, old_lp = torch.tensor([0.1, -0.2]), torch.tensor([0.0, 0.0])
    cfg = RatioConfig(ratio_norm=True, variant="batch_scalar", clip_range=1.0)
    out = surrogate(lp, old_lp, torch.ones(2), cfg, mean=mu, old_mean=mu_old, step_std=s, dt=dt)
    s_bar = s.mean()
    bias = ((mu - mu_old) ** 2).mean() / (2 * s_bar**2)  # one scalar over the whole micro-batch
    torch.testing.assert_close(out.log_ratio, (lp + bias) * s_bar)
    # loss reweighted by 1 / mean Δt; with ε = 1 nothing is clipped: loss = −A·r/Δt
    torch.testing.assert_close(out.loss, -out.ratio / dt.mean())
    per = surrogate(lp, old_lp, torch.ones(2), RatioConfig(ratio_norm=True, variant="per_sample", clip_range=1.0),
                    mean=mu, old_mean=mu_old, step_std=s, dt=dt)  # fmt: skip
    assert not torch.allclose(per.log_ratio, out.log_ratio)


def test_ratio_norm_requires_means():
    with pytest.raises(ValueError, match="RatioNorm"):
        surrogate(torch.zeros(1), torch.zeros(1), torch.ones(1), RatioConfig(ratio_norm=True))


@pytest.mark.parametrize("form", ["per_element", "reference"])
def test_kl_closed_form(form):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 10, generator=g, requires_grad=True)
    ref = torch.randn(3, 10, generator=g)
    s, dt = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.05, 0.1, 0.2])
    cfg = RatioConfig(ratio_norm=False, kl_beta=0.5, kl_form=form)
    out = surrogate(torch.zeros(3), torch.zeros(3), torch.zeros(3), cfg, mean=mu, ref_mean=ref, step_std=s, dt=dt)
    # equal-variance Gaussians: KL = ||μ − μref||² / (2 s²) summed over D; per element = / D
    want = ((mu - ref) ** 2).sum(1).detach() / (2 * s**2) / 10
    if form == "reference":
        want = want * dt  # flow_grpo's /2σ_t² with s² = σ_t² Δt
    torch.testing.assert_close(out.kl, want)
    torch.testing.assert_close(out.loss.detach(), 0.5 * want)  # A = 0: only the KL term
    out.loss.sum().backward()
    assert mu.grad.abs().sum() > 0


def test_ratio_config_from_spec():
    spec = GRPOSpec(clipRange=2e-6, ratioNormVariant="per_sample", klBeta=0.01, klForm="reference")
    cfg = RatioConfig.from_spec(spec)
    assert (cfg.clip_range, cfg.variant, cfg.kl_beta, cfg.kl_form) == (2e-6, "per_sample", 0.01, "reference")
