"""Policy loading, LoRA (trainable set, save/load, alpha), reference policy, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stable_layers.policy import model
from stable_layers.policy import sampler as S
from stable_layers.spec import RunSpec


def _spec(**model_fields: object) -> RunSpec:
    m = {"preset": "tiny-random"}
    m.update(model_fields)
    return RunSpec.model_validate(
        {
            "model": m,
            "lora": {"rank": 4, "alpha": 16},
            "sampler": {"resolution": 32, "layers": 2, "trainSteps": 3, "sdeWindowSize": 1, "sdeWindowRange": [0, 2]},
        }
    )


def _randomise_lora(policy: model.Policy, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.lora_params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _image() -> np.ndarray:
    img = np.full((32, 32, 4), 255, np.uint8)
    img[8:20, 4:28, :3] = (20, 120, 220)
    return img


def _inputs(policy: model.Policy) -> tuple[torch.Tensor, S.Condition]:
    return S.prepare(policy, _image(), resolution=32, layers=2, generators=S.seed_generators([0]))


def _v(policy: model.Policy, x: torch.Tensor, cond: S.Condition) -> torch.Tensor:
    with torch.no_grad():
        return S.predict_velocity(policy, x, torch.tensor(700.0), cond.image_latents, cond.img_shapes)


def test_load_freezes_base_and_adds_trainable_lora() -> None:
    pol = model.load_policy(_spec())
    assert pol.device == torch.device("cpu") and pol.dtype == torch.float32
    assert pol.prompt_embeds.shape[0] == 1 and pol.prompt_embeds.shape[2] == 16
    trainable = [n for n, p in pol.transformer.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == len(pol.lora_params)
    assert not any(p.requires_grad for p in pol.pipe.vae.parameters())
    assert pol.transformer.peft_config["default"].lora_alpha == 16
    assert pol.transformer.is_gradient_checkpointing
    assert pol.frozen_lora_modules == sorted(
        f"transformer_blocks.1.{m}"
        for m in ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")
    )
    base = model.load_policy(_spec(gradientCheckpointing=False), with_lora=False)
    assert not base.has_lora and base.lora_params == [] and not base.transformer.is_gradient_checkpointing


def test_every_trainable_lora_tensor_gets_a_gradient_and_the_frozen_ones_could_not() -> None:
    pol = model.load_policy(_spec(gradientCheckpointing=False))
    _randomise_lora(pol)
    for name, p in pol.transformer.named_parameters():
        if ".lora_" in name:
            p.requires_grad_(True)  # temporarily, to see where gradient can reach
    ro = S.sample_group(pol, _image(), group_size=2, sampler=pol.spec.sampler, seeds=[1, 2], window_start=0)
    logp, _, _ = S.replay_log_prob(pol, ro, [0, 1], 0)
    logp.sum().backward()
    trainable_ids = {id(p) for p in pol.lora_params}
    for name, p in pol.transformer.named_parameters():
        if ".lora_" not in name:
            continue
        if id(p) in trainable_ids:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0, name


def test_gradient_checkpointing_gives_the_same_gradient() -> None:
    grads = []
    for ckpt in (False, True):
        pol = model.load_policy(_spec(gradientCheckpointing=ckpt))
        _randomise_lora(pol)
        ro = S.sample_group(pol, _image(), group_size=1, sampler=pol.spec.sampler, seeds=[3], window_start=1)
        S.replay_log_prob(pol, ro, [0], 0)[0].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in pol.lora_params]))
    torch.testing.assert_close(grads[0], grads[1])


def test_reference_policy_is_the_base_model() -> None:
    pol = model.load_policy(_spec())
    base = model.load_policy(_spec(), with_lora=False)
    _randomise_lora(pol)
    x, cond = _inputs(pol)
    adapted = _v(pol, x, cond)
    with model.reference_policy(pol):
        assert not torch.is_grad_enabled()
        ref = _v(pol, x, cond)
    assert torch.equal(ref, _v(base, x, cond))
    assert not torch.allclose(adapted, ref)
    assert torch.equal(_v(pol, x, cond), adapted)  # adapters back on afterwards


def test_save_lora_then_diffusers_load_lora_weights_reproduces_output(tmp_path: Path) -> None:
    pol = model.load_policy(_spec())
    _randomise_lora(pol)
    x, cond = _inputs(pol)
    adapted = _v(pol, x, cond)
    out = model.save_lora(pol, tmp_path / "lora")
    assert (out / model.LORA_WEIGHT_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    fresh = model.tiny_pipeline(seed=0)  # same base weights as the tiny-random preset
    fresh.load_lora_weights(str(out), weight_name=model.LORA_WEIGHT_NAME)
    assert fresh.transformer.peft_config["default_0"].lora_alpha == 16  # alpha preserved (not reset to r)
    other = model.Policy(
        pipe=fresh,
        transformer=fresh.transformer,
        device=pol.device,
        dtype=pol.dtype,
        prompt_embeds=pol.prompt_embeds,
        prompt_mask=pol.prompt_mask,
    )
    torch.testing.assert_close(_v(other, x, cond), adapted, rtol=1e-5, atol=1e-6)


def test_load_lora_in_place_keeps_tensors_and_restores_values(tmp_path: Path) -> None:
    pol = model.load_policy(_spec())
    _randomise_lora(pol, seed=1)
    x, cond = _inputs(pol)
    adapted = _v(pol, x, cond)
    model.save_lora(pol, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "other.txt").write_text("kept")
    model.save_lora(pol, tmp_path / "ckpt")  # into an existing directory: other files survive
    assert (tmp_path / "ckpt" / "other.txt").read_text() == "kept"
    ids = [id(p) for p in pol.lora_params]
    _randomise_lora(pol, seed=2)
    assert not torch.allclose(_v(pol, x, cond), adapted)
    model.load_lora(pol, tmp_path / "ckpt")
    assert [id(p) for p in pol.lora_params] == ids
    assert torch.equal(_v(pol, x, cond), adapted)
    # into a policy without an adapter (evaluation of a checkpoint)
    bare = model.load_policy(_spec(), with_lora=False)
    model.load_lora(bare, tmp_path / "ckpt")
    torch.testing.assert_close(_v(bare, x, cond), adapted, rtol=1e-5, atol=1e-6)


def test_load_lora_rejects_a_mismatched_adapter(tmp_path: Path) -> None:
    pol = model.load_policy(_spec())
    model.save_lora(pol, tmp_path / "r4")
    other = RunSpec.model_validate({**_spec().to_dict(), "lora": {"rank": 8, "alpha": 16}})
    pol8 = model.load_policy(other)
    with pytest.raises(model.PolicyLoadError, match=r"lora\.rank"):
        model.load_lora(pol8, tmp_path / "r4")
    with pytest.raises(model.PolicyLoadError, match="not found"):
        model.load_lora(pol8, tmp_path / "missing")


def test_clear_errors_for_missing_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "TINY_ASSETS", tmp_path / "assets" / "tiny")
    with pytest.raises(model.PolicyLoadError, match="pretrain-tiny"):
        model.load_policy(_spec(preset="tiny"))
    with pytest.raises(model.PolicyLoadError, match="does not exist"):
        model.load_policy(_spec(preset=None, base=str(tmp_path / "nope")))
    with pytest.raises(model.PolicyLoadError, match=r"model_index\.json"):
        model.load_policy(_spec(preset=None, base=str(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id that cannot be fetched: wrapped, names the field
    with pytest.raises(model.PolicyLoadError, match=r"model\.base: cannot load"):
        model.load_policy(_spec(preset=None, base="nobody/not-a-model"))
    with pytest.raises(model.PolicyLoadError, match=r"model\.device"):
        model.resolve_device("tpu:0")


def test_load_from_a_local_pipeline_directory(tmp_path: Path) -> None:
    model.tiny_pipeline(seed=0).save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == "QwenImageLayeredPipeline"
    pol = model.load_policy(_spec(preset=None, base=str(tmp_path / "pipe"), dtype="float32"))
    ref = model.load_policy(_spec(), with_lora=False)
    assert pol.pipe.text_encoder is None  # a real (non-preset) model drops its text encoder after encoding
    torch.testing.assert_close(pol.prompt_embeds, ref.prompt_embeds)
    x, cond = _inputs(ref)
    torch.testing.assert_close(_v(pol, x, cond), _v(ref, x, cond))


def test_tiny_preset_loads_the_shipped_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "assets" / "tiny"
    model.tiny_pipeline(seed=4).save_pretrained(shipped)
    monkeypatch.setattr(model, "TINY_ASSETS", shipped)
    pol = model.load_policy(_spec(preset="tiny"), with_lora=False)
    assert pol.dtype == torch.float32 and pol.pipe.text_encoder is not None  # presets keep it for __call__
    expected = model.tiny_pipeline(seed=4).transformer.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pol.transformer.state_dict().items())
