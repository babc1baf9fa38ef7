"""On the first on-policy micro-batch (tiny model, real sampler): ratio = 1 to fp32 precision and the
surrogate's gradient is the REINFORCE gradient A·∇log π (scaled by s/Δt under RatioNorm)."""

from __future__ import annotations

import pytest
import torch

from stable_layers.spec import parse_run_spec
from stable_layers.trainer.grpo import RatioConfig, surrogate

SPEC = {
    "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "sampler": {"trainSteps": 4, "sdeWindowSize": 2, "sdeWindowRange": [0, 2], "resolution": 32, "layers": 2},
}


@pytest.fixture(scope="module")
def rollout_and_policy():
    import numpy as np

    from stable_layers.policy.model import load_policy
    from stable_layers.policy.sampler import sample_group

    spec = parse_run_spec(SPEC)
    policy = load_policy(spec)
    with torch.no_grad():  # a LoRA that is not the identity, so the adapter matters
        for p in policy.lora_params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    image = (np.random.default_rng(0).random((32, 32, 4)) * 255).astype(np.uint8)
    rollout = sample_group(policy, image, group_size=3, sampler=spec.sampler, seeds=[1, 2, 3], window_start=1)
    return policy, rollout


ADV = torch.tensor([1.5, -0.5, -1.0])


def _grads(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=False)])


@pytest.mark.parametrize("k", [0, 1])
def test_ratio_is_one_and_gradient_is_reinforce(rollout_and_policy, k):
    from stable_layers.policy.sampler import replay_log_prob

    policy, rollout = rollout_and_policy
    logp, _, _ = replay_log_prob(policy, rollout, [0, 1, 2], k)  # the rollout's own batch (method.md §1.3H)
    out = surrogate(logp, rollout.log_probs[:, k], ADV, RatioConfig(ratio_norm=False, clip_range=1e-4))
    assert (out.ratio - 1).abs().max().item() < 1e-6
    got = _grads(out.loss.mean(), policy.lora_params)
    want = _grads(-(ADV * logp).mean(), policy.lora_params)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("variant", ["per_sample", "dimension_aware"])
def test_ratio_norm_on_policy_is_scaled_reinforce(rollout_and_policy, variant):
    from stable_layers.policy.sampler import replay_log_prob

    policy, rollout = rollout_and_policy
    k = 0
    logp, mean, std = replay_log_prob(policy, rollout, [0, 1, 2], k)
    dt = rollout.sigmas[:, k] - rollout.sigmas_next[:, k]
    cfg = RatioConfig(ratio_norm=True, variant=variant, clip_range=1e-4, dim_ref=1024)
    out = surrogate(logp, rollout.log_probs[:, k], ADV, cfg, mean=mean, old_mean=rollout.means[:, k],
                    step_std=rollout.stds[:, k], dt=dt)  # fmt: skip
    assert (out.ratio - 1).abs().max().item() < 1e-6
    torch.testing.assert_close(std, rollout.stds[:, k])
    scale = rollout.stds[:, k] / dt  # d log r_RN = s·d log π at Δμ = 0; the loss is reweighted by 1/Δt
    if variant == "dimension_aware":
        scale = scale * (mean[0].numel() / 1024) ** 0.5
    got = _grads(out.loss.mean(), policy.lora_params)
    want = _grads(-(ADV * scale * logp).mean(), policy.lora_params)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
