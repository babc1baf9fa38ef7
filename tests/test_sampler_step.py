"""`sde_step_with_logprob`: the Flow-GRPO / CPS step and its Gaussian log-density (pure math)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stable_layers.policy.sampler import sde_step_with_logprob


def _inputs(batch: int = 3, shape: tuple[int, ...] = (40, 64), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.randn(batch, *shape, generator=g)


def _normal_logp(prev: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    scale = std.view(-1, *([1] * (prev.ndim - 1))).expand_as(prev)
    lp = torch.distributions.Normal(mean.double(), scale.double()).log_prob(prev.double())
    return lp.mean(dim=tuple(range(1, lp.ndim)))


@pytest.mark.parametrize("sde_type", ["flow", "cps"])
def test_log_prob_is_the_normalised_gaussian_density(sde_type: str) -> None:
    v, x = _inputs()
    sigma = torch.tensor([0.9, 0.6, 0.3])
    sigma_next = torch.tensor([0.8, 0.45, 0.1])
    gen = torch.Generator().manual_seed(1)
    prev, logp, mean, std = sde_step_with_logprob(v, sigma, sigma_next, x, 0.8, generator=gen, sde_type=sde_type)
    assert logp.dtype == torch.float32 and logp.shape == (3,) and std.shape == (3,)
    torch.testing.assert_close(logp.double(), _normal_logp(prev, mean, std), rtol=1e-6, atol=1e-5)
    # scoring an arbitrary given sample uses the same density
    other = prev + 0.3
    _, logp_other, _, _ = sde_step_with_logprob(v, sigma, sigma_next, x, 0.8, prev_sample=other, sde_type=sde_type)
    torch.testing.assert_close(logp_other.double(), _normal_logp(other, mean, std), rtol=1e-6, atol=1e-5)


def test_flow_std_and_mean_follow_flow_grpo() -> None:
    v, x = _inputs(batch=1)
    s, sn, a = 0.7, 0.5, 1.2
    _, _, mean, std = sde_step_with_logprob(v, s, sn, x, a)
    std_t = math.sqrt(s / (1 - s)) * a
    dt = sn - s
    torch.testing.assert_close(std, torch.tensor([std_t * math.sqrt(-dt)]))
    expected = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    torch.testing.assert_close(mean, expected)


def test_cps_std_and_mean() -> None:
    v, x = _inputs(batch=1)
    s, sn, a = 0.7, 0.5, 0.8
    _, _, mean, std = sde_step_with_logprob(v, s, sn, x, a, sde_type="cps")
    std_k = sn * math.sin(a * math.pi / 2)
    torch.testing.assert_close(std, torch.tensor([std_k]))
    torch.testing.assert_close(mean, (x - s * v) * (1 - sn) + (x + (1 - s) * v) * math.sqrt(sn**2 - std_k**2))


def test_cps_density_integrates_to_one() -> None:
    # 1-D numeric integral of exp(log_prob) over the next sample: a proper density integrates to 1
    v = torch.tensor([[0.3]])
    x = torch.tensor([[0.1]])
    grid = torch.linspace(-6, 6, 20001).view(-1, 1)
    _, logp, _, _ = sde_step_with_logprob(
        v.expand(len(grid), 1), 0.6, 0.4, x.expand(len(grid), 1), 0.8, prev_sample=grid, sde_type="cps"
    )
    integral = torch.trapezoid(logp.double().exp(), grid.view(-1).double())
    assert abs(float(integral) - 1.0) < 1e-4


@pytest.mark.parametrize("sde_type", ["flow", "cps"])
def test_samples_have_the_stated_mean_and_std(sde_type: str) -> None:
    v, x = _inputs(batch=2, shape=(200, 64))
    prev, _, mean, std = sde_step_with_logprob(
        v, 0.8, 0.6, x, 1.0, generator=torch.Generator().manual_seed(3), sde_type=sde_type
    )
    z = (prev - mean) / std.view(-1, 1, 1)
    assert abs(float(z.mean())) < 0.02
    assert abs(float(z.std()) - 1.0) < 0.02


def test_noise_level_zero_is_the_schedulers_euler_step() -> None:
    from stable_layers.policy.tiny import build_scheduler

    sched = build_scheduler()
    sched.set_timesteps(sigmas=np.linspace(1.0, 0, 5)[:-1], mu=1.2)
    v, x = _inputs()
    for i, t in enumerate(sched.timesteps):
        sched._step_index = i
        expected = sched.step(v, t, x, return_dict=False)[0]
        for sde_type in ("flow", "cps"):
            prev, logp, mean, std = sde_step_with_logprob(
                v, sched.sigmas[i], sched.sigmas[i + 1], x, 0.0, sde_type=sde_type, sigma_max=sched.sigmas[1]
            )
            assert torch.equal(prev, expected) and torch.equal(mean, expected)
            assert torch.isnan(logp).all() and torch.equal(std, torch.zeros(3))


def test_sigma_one_guard_gives_finite_values() -> None:
    v, x = _inputs()
    prev, logp, mean, std = sde_step_with_logprob(
        v, 1.0, 0.99, x, 1.2, generator=torch.Generator().manual_seed(0), sigma_max=0.995
    )
    for t in (prev, logp, mean, std):
        assert torch.isfinite(t).all()
    # the guard substitutes sigma_max in the 1/(1-sigma) term only
    assert float(std[0]) == pytest.approx(math.sqrt(1.0 / (1 - 0.995)) * 1.2 * math.sqrt(0.01), rel=1e-5)
    # per-sample sigmas: only the sample at 1 is guarded
    _, logp2, _, std2 = sde_step_with_logprob(
        v, torch.tensor([1.0, 0.8, 0.5]), torch.tensor([0.99, 0.7, 0.4]), x, 1.2, prev_sample=prev, sigma_max=0.995
    )
    assert torch.isfinite(logp2).all()
    assert float(std2[1]) == pytest.approx(math.sqrt(0.8 / 0.2) * 1.2 * math.sqrt(0.1), rel=1e-5)
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step_with_logprob(v, 1.0, 0.99, x, 1.2)


def test_per_sample_sigmas_equal_scalar_steps() -> None:
    v, x = _inputs()
    sig, nxt = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.8, 0.45, 0.1])
    prev = x + 0.1
    _, logp, mean, std = sde_step_with_logprob(v, sig, nxt, x, 0.7, prev_sample=prev)
    for b in range(3):
        _, lb, mb, sb = sde_step_with_logprob(
            v[b : b + 1], float(sig[b]), float(nxt[b]), x[b : b + 1], 0.7, prev_sample=prev[b : b + 1]
        )
        torch.testing.assert_close(logp[b : b + 1], lb)
        torch.testing.assert_close(mean[b : b + 1], mb)
        torch.testing.assert_close(std[b : b + 1], sb)


def test_fp32_math_and_gradient_only_through_the_mean() -> None:
    v, x = _inputs()
    v = v.to(torch.bfloat16).requires_grad_(True)
    prev = (x + 0.05).requires_grad_(True)
    _, logp, mean, _ = sde_step_with_logprob(v, 0.5, 0.4, x.to(torch.bfloat16), 1.0, prev_sample=prev)
    assert logp.dtype == torch.float32 and mean.dtype == torch.float32
    logp.sum().backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0
    assert prev.grad is None  # the stored sample is data


def test_generator_list_gives_per_sample_noise() -> None:
    v, x = _inputs()
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    prev, _, _, _ = sde_step_with_logprob(v, 0.5, 0.4, x, 1.0, generator=gens)
    solo, _, _, _ = sde_step_with_logprob(v[1:2], 0.5, 0.4, x[1:2], 1.0, generator=[torch.Generator().manual_seed(6)])
    assert torch.equal(prev[1:2], solo)
    assert not torch.equal(prev[0], prev[1])


def test_bad_arguments() -> None:
    v, x = _inputs()
    with pytest.raises(ValueError, match="sde_type"):
        sde_step_with_logprob(v, 0.5, 0.4, x, 1.0, sde_type="ddim")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero noise"):
        sde_step_with_logprob(v, 0.5, 0.0, x, 1.0, sde_type="cps")
    with pytest.raises(ValueError, match="shape"):
        sde_step_with_logprob(v, torch.tensor([0.5, 0.4]), 0.3, x, 1.0)
