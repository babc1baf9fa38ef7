"""Group rollouts, replay, decoding and evaluation sampling on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stable_layers.policy import decompose, model
from stable_layers.policy import sampler as S
from stable_layers.spec import RunSpec, SamplerSpec


def _spec(**sampler: object) -> RunSpec:
    base = {
        "resolution": 64,
        "layers": 3,
        "trainSteps": 4,
        "sdeWindowSize": 2,
        "sdeWindowRange": [0, 3],
        "noiseLevel": 1.0,
    }
    base.update(sampler)
    return RunSpec.model_validate(
        {"model": {"preset": "tiny-random"}, "lora": {"rank": 4, "alpha": 8}, "sampler": base}
    )


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    img = np.zeros((h, w, 4), np.uint8)
    img[..., 2] = 180
    img[..., 3] = 255
    img[h // 4 : h // 2, w // 4 : 3 * w // 4, :3] = (230, 40, 40)
    return img


@pytest.fixture(scope="module")
def policy() -> model.Policy:
    pol = model.load_policy(_spec())
    # a non-identity adapter, so the LoRA path is exercised by every forward
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pol.lora_params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pol


def test_working_size_keeps_aspect_and_packing_multiple() -> None:
    assert S.working_size(640, 640, 640, 16) == (640, 640)
    assert S.working_size(1280, 720, 640, 16) == (640, 352)
    assert S.working_size(30, 1000, 64, 16) == (16, 64)


def test_rollout_records_the_window(policy: model.Policy) -> None:
    spec = _spec()
    ro = S.sample_group(policy, _image(), group_size=3, sampler=spec.sampler, seeds=[1, 2, 3], window_start=1)
    n = (3 + 1) * (48 // 16) * (64 // 16)
    assert (ro.height, ro.width, ro.layers) == (48, 64, 3)
    assert ro.latents.shape == ro.next_latents.shape == ro.means.shape == (3, 2, n, 64)
    assert ro.latents.dtype == ro.means.dtype == ro.log_probs.dtype == torch.float32
    assert ro.log_probs.shape == ro.sigmas.shape == ro.stds.shape == ro.timesteps.shape == (3, 2)
    assert ro.step_indices.tolist() == [1, 2]
    assert torch.isfinite(ro.log_probs).all()
    # transitions chain: the sample after window step 1 is the input of window step 2
    assert torch.equal(ro.next_latents[:, 0], ro.latents[:, 1])
    assert torch.all(ro.sigmas_next < ro.sigmas)
    assert ro.image_latents.shape == (3, (48 // 16) * (64 // 16), 64)
    # window size 0 = every step but the last
    ro0 = S.sample_group(
        policy, _image(), group_size=2, sampler=_spec(sdeWindowSize=0).sampler, seeds=[1, 2], window_start=None
    )
    assert ro0.step_indices.tolist() == [0, 1, 2]


def test_replay_reproduces_rollout_log_probs_on_policy(policy: model.Policy) -> None:
    spec = _spec()
    ro = S.sample_group(policy, _image(), group_size=4, sampler=spec.sampler, seeds=[11, 12, 13, 14], window_start=0)
    for k in range(2):
        logp, mean, std = S.replay_log_prob(policy, ro, [0, 1, 2, 3], k)
        assert logp.requires_grad and mean.requires_grad
        assert torch.equal(logp.detach(), ro.log_probs[:, k])
        assert torch.equal(mean.detach(), ro.means[:, k])
        assert torch.equal(std, ro.stds[:, k])
    # a micro-batch of a subset replays to fp32 precision too
    logp, _, _ = S.replay_log_prob(policy, ro, [2], 1)
    torch.testing.assert_close(logp.detach(), ro.log_probs[2:3, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sde_type", ["flow", "cps"])
def test_group_diversity_and_seed_determinism(policy: model.Policy, sde_type: str) -> None:
    spec = _spec(sdeType=sde_type)
    a = S.sample_group(policy, _image(), group_size=3, sampler=spec.sampler, seeds=[1, 2, 3], window_start=1)
    b = S.sample_group(policy, _image(), group_size=3, sampler=spec.sampler, seeds=[1, 2, 3], window_start=1)
    assert torch.equal(a.final_latents, b.final_latents) and torch.equal(a.log_probs, b.log_probs)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (a.final_latents[i] - a.final_latents[j]).abs().max() > 1e-2
    # a candidate depends on its own seed only, not on the rest of its group
    solo = S.sample_group(policy, _image(), group_size=1, sampler=spec.sampler, seeds=[2], window_start=1)
    torch.testing.assert_close(solo.final_latents[0], a.final_latents[1], rtol=0, atol=1e-5)


def test_same_latent_shares_initial_noise(policy: model.Policy) -> None:
    spec = _spec(sameLatent=True, noiseLevel=0.0)
    ro = S.sample_group(policy, _image(), group_size=3, sampler=spec.sampler, seeds=[4, 5, 6], window_start=0)
    # with no SDE noise, shared initial noise means identical candidates
    assert torch.equal(ro.final_latents[0], ro.final_latents[2])


def test_ode_rollout_matches_scheduler_loop(policy: model.Policy) -> None:
    spec = _spec(noiseLevel=0.0, sdeWindowSize=0)
    seeds = [3, 4]
    ro = S.sample_group(policy, _image(), group_size=2, sampler=spec.sampler, seeds=seeds, window_start=None)
    latents, cond = S.prepare(policy, _image(), resolution=64, layers=3, generators=S.seed_generators(seeds))
    sched = type(policy.pipe.scheduler).from_config(policy.pipe.scheduler.config)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0, 5)[:-1], mu=(cond.image_latents.shape[1] / 256) ** 0.5)
    sched.set_begin_index(0)
    x = latents
    with torch.no_grad():
        for t in sched.timesteps:
            v = S.predict_velocity(policy, x, t, cond.image_latents, cond.img_shapes)
            x = sched.step(v, t, x, return_dict=False)[0]
    assert torch.equal(ro.final_latents, x)


def test_ode_rollout_equals_pipeline_call() -> None:
    """The honest end-to-end check: our ODE loop + decode vs `QwenImageLayeredPipeline.__call__`
    at its mandatory 640 bucket, same initial latents, CFG off (2 layers, 2 steps: ~7 s on CPU)."""
    from PIL import Image

    spec = RunSpec.model_validate(
        {
            "model": {"preset": "tiny-random"},
            "sampler": {
                "resolution": 640,
                "layers": 2,
                "trainSteps": 2,
                "sdeWindowRange": [0, 1],
                "sdeWindowSize": 1,
                "noiseLevel": 0.0,
            },
        }
    )
    pol = model.load_policy(spec, with_lora=False)
    img = np.zeros((640, 640, 4), np.uint8)
    img[..., 3] = 255
    img[100:300, 100:400, 0] = 200
    ro = S.sample_group(pol, img, group_size=1, sampler=spec.sampler, seeds=[7], window_start=0)
    ours = S.decode(pol, ro.final_latents, ro)[0]
    init, _ = S.prepare(pol, img, resolution=640, layers=2, generators=S.seed_generators([7]))
    captured: dict[str, torch.Tensor] = {}

    def grab(pipe: object, i: int, t: object, kw: dict) -> dict:
        captured["latents"] = kw["latents"].clone()
        return {}

    out = pol.pipe(
        image=Image.fromarray(img, "RGBA"),
        prompt=["placeholder"],  # non-empty: an empty prompt triggers auto-captioning (model.md §6.3)
        prompt_embeds=pol.prompt_embeds,
        prompt_embeds_mask=pol.prompt_mask,
        true_cfg_scale=1.0,
        layers=2,
        num_inference_steps=2,
        resolution=640,
        latents=init,
        output_type="np",
        callback_on_step_end=grab,
    )
    assert torch.equal(captured["latents"], ro.final_latents)
    reference = [(a * 255).round().astype(np.uint8) for a in out.images[0]]
    assert len(ours) == len(reference) == 2
    for mine, theirs in zip(ours, reference, strict=True):
        assert np.array_equal(mine, theirs)


def test_decode_shapes_and_batch_independence(policy: model.Policy) -> None:
    spec = _spec()
    ro = S.sample_group(policy, _image(), group_size=2, sampler=spec.sampler, seeds=[1, 2], window_start=0)
    both = S.decode(policy, ro.final_latents, ro)
    assert len(both) == 2 and all(len(c) == 3 for c in both)
    for layer in both[0]:
        assert layer.shape == (48, 64, 4) and layer.dtype == np.uint8
    single = S.decode(policy, ro.final_latents[1:], ro.select([1]))
    assert all(np.array_equal(a, b) for a, b in zip(single[0], both[1], strict=True))


def test_select_slices_every_per_sample_field(policy: model.Policy) -> None:
    ro = S.sample_group(policy, _image(), group_size=3, sampler=_spec().sampler, seeds=[1, 2, 3], window_start=0)
    sub = ro.select([2, 0])
    assert sub.seeds == [3, 1] and sub.size == 2
    assert torch.equal(sub.log_probs, ro.log_probs[[2, 0]])
    assert torch.equal(sub.step_indices, ro.step_indices)


def test_decompose_is_deterministic_and_returns_input_size(policy: model.Policy) -> None:
    imgs = [_image(40, 72), _image(64, 64)]
    a = decompose(policy, imgs, layers=2, steps=3, seed=42, resolution=64)
    b = decompose(policy, imgs, layers=2, steps=3, seed=42, resolution=64)
    assert [layer.shape for layer in a[0]] == [(40, 72, 4)] * 2
    assert [layer.shape for layer in a[1]] == [(64, 64, 4)] * 2
    assert all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))


def test_true_cfg_changes_the_velocity() -> None:
    pol = model.load_policy(_spec(cfgScale=3.0), with_lora=False)
    assert pol.negative_embeds is not None
    x, cond = S.prepare(pol, _image(), resolution=64, layers=3, generators=S.seed_generators([0]))
    t = torch.tensor(900.0)
    with torch.no_grad():
        v1 = S.predict_velocity(pol, x, t, cond.image_latents, cond.img_shapes)
        v3 = S.predict_velocity(pol, x, t, cond.image_latents, cond.img_shapes, cfg_scale=3.0)
        vn = S.predict_velocity(pol, x, t, cond.image_latents, cond.img_shapes, cfg_scale=3.0, cfg_normalize=True)
    assert not torch.allclose(v1, v3)
    torch.testing.assert_close(vn.norm(dim=-1), v1.norm(dim=-1))


def test_bad_sampler_arguments(policy: model.Policy) -> None:
    spec = _spec()
    with pytest.raises(ValueError, match="seeds"):
        S.sample_group(policy, _image(), group_size=3, sampler=spec.sampler, seeds=[1, 2], window_start=0)
    with pytest.raises(ValueError, match="window_start is required"):
        S.sample_group(policy, _image(), group_size=1, sampler=spec.sampler, seeds=[1], window_start=None)
    with pytest.raises(ValueError, match="does not fit"):
        S.sample_group(policy, _image(), group_size=1, sampler=spec.sampler, seeds=[1], window_start=3)
    cps_last = SamplerSpec.model_validate(
        {"trainSteps": 4, "sdeWindowSize": 1, "sdeType": "cps", "sdeWindowRange": [0, 4]}
    )
    with pytest.raises(ValueError, match="last step"):
        S.sample_group(policy, _image(), group_size=1, sampler=cps_last, seeds=[1], window_start=3)
    with pytest.raises(ValueError, match="negative prompt"):
        x, cond = S.prepare(policy, _image(), resolution=64, layers=3, generators=S.seed_generators([0]))
        S.predict_velocity(policy, x, torch.tensor(500.0), cond.image_latents, cond.img_shapes, cfg_scale=2.0)
