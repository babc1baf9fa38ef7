"""Heun sampling: matches diffusers' own flow-matching Heun step on the pipeline's schedule, costs
2S − 1 transformer calls, is second order, and batching images does not change the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stable_layers.policy import decompose, model, ode_sample, transformer_calls
from stable_layers.policy import sampler as S
from stable_layers.spec import RunSpec


@pytest.fixture(scope="module")
def policy() -> model.Policy:
    spec = RunSpec.model_validate({"model": {"preset": "tiny-random"}, "lora": {"rank": 4, "alpha": 8}})
    pol = model.load_policy(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pol.lora_params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pol


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 1] = 160
    img[..., 3] = 255
    img[h // 4 : h // 2, w // 4 : 3 * w // 4, :3] = (230, 40, 40)
    return img


def _start(policy: model.Policy, seed: int = 3) -> tuple[torch.Tensor, S.Condition]:
    return S.prepare(policy, _image(), resolution=64, layers=2, generators=S.seed_generators([seed]))


def _diffusers_heun(policy: model.Policy, latents: torch.Tensor, cond: S.Condition, steps: int) -> torch.Tensor:
    """The reference: diffusers' FlowMatchHeunDiscreteScheduler.step, its schedule replaced by the
    pipeline's (it cannot build that one itself: no sigmas/mu in its set_timesteps)."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    timesteps, sigmas = S.schedule(policy, steps, cond.image_latents.shape[1])
    ref = FlowMatchHeunDiscreteScheduler()
    ref.set_timesteps(steps)
    ref.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
    ref.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    x = latents.float()
    with torch.no_grad():
        for t in ref.timesteps:
            v = S.predict_velocity(policy, x, t, cond.image_latents, cond.img_shapes).float()
            x = ref.step(v, t, x, return_dict=False)[0]
    return x


def test_heun_matches_diffusers_flow_match_heun_step(policy: model.Policy) -> None:
    latents, cond = _start(policy)
    ours = ode_sample(policy, latents, cond, 6, method="heun")
    torch.testing.assert_close(ours, _diffusers_heun(policy, latents, cond, 6), rtol=1e-5, atol=1e-5)
    euler = ode_sample(policy, latents, cond, 6, method="euler")
    assert (ours - euler).abs().max() > 1e-3  # a different solver, not Euler relabelled


def test_euler_is_the_pipeline_step(policy: model.Policy) -> None:
    latents, cond = _start(policy)
    timesteps, sigmas = S.schedule(policy, 4, cond.image_latents.shape[1])
    x = latents.float()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            v = S.predict_velocity(policy, x, t, cond.image_latents, cond.img_shapes).float()
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    assert torch.equal(ode_sample(policy, latents, cond, 4, method="euler"), x)


@pytest.mark.parametrize(("method", "expected"), [("heun", 99), ("euler", 50)])
def test_fifty_steps_cost(policy: model.Policy, method: str, expected: int) -> None:
    calls = []
    hook = policy.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        latents, cond = S.prepare(policy, _image(32, 32), resolution=32, layers=2, generators=S.seed_generators([0]))
        ode_sample(policy, latents, cond, 50, method=method)  # type: ignore[arg-type]
    finally:
        hook.remove()
    assert len(calls) == expected == transformer_calls(50, method)  # type: ignore[arg-type]


def test_heun_is_closer_to_the_converged_flow_than_euler(policy: model.Policy) -> None:
    latents, cond = _start(policy)
    fine = ode_sample(policy, latents, cond, 200, method="heun")
    err = {m: float((ode_sample(policy, latents, cond, 8, method=m) - fine).abs().mean()) for m in ("euler", "heun")}
    assert err["heun"] < 0.5 * err["euler"], err


def test_batched_decompose_equals_one_at_a_time(policy: model.Policy) -> None:
    images = [_image(), _image(), _image(64, 64)]  # the third has another working size: its own batch
    kw = {"layers": 2, "steps": 3, "seed": 42, "resolution": 64, "method": "heun"}
    one = decompose(policy, images, batch_size=1, **kw)  # type: ignore[arg-type]
    batched = decompose(policy, images, batch_size=2, **kw)  # type: ignore[arg-type]
    assert [len(r) for r in batched] == [2, 2, 2]
    assert [r[0].shape for r in batched] == [(48, 64, 4), (48, 64, 4), (64, 64, 4)]
    for a, b in zip(one, batched, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    # image i is seeded seed + i: the first two images are the same picture with different noise
    assert not all(np.array_equal(x, y) for x, y in zip(one[0], one[1], strict=True))
