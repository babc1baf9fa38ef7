"""Adapters both ways: a checkpoint's PEFT folder loads with plain peft (as the release script
does) and gives the trained policy's velocity; `lora.init` continues from a PEFT folder or a
diffusers LoRA file, and refuses one whose rank, alpha or modules differ from the spec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stable_layers.policy import model
from stable_layers.policy import sampler as S
from stable_layers.spec import RunSpec, parse_run_spec

TRAIN = {
    "name": "adapter-test",
    "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "data": {"kind": "synthetic", "numImages": 2, "seed": 3},
    "sampler": {"trainSteps": 3, "sdeWindowSize": 1, "sdeWindowRange": [0, 2], "resolution": 32, "layers": 2},
    "grpo": {"groupSize": 3, "imagesPerIteration": 1, "lr": 0.05, "optimizerStepsPerIteration": 1},
    "distributed": {"engine": "torch"},
    "checkpoint": {"everySteps": 2, "keep": 1},
}


def _spec(**lora: Any) -> RunSpec:
    body = json.loads(json.dumps(TRAIN))
    body["lora"].update(lora)
    return parse_run_spec(body)


def _image() -> np.ndarray:
    img = np.full((32, 32, 4), 255, np.uint8)
    img[8:20, 4:28, :3] = (20, 120, 220)
    return img


def _velocity(policy: Any, transformer: Any = None) -> torch.Tensor:
    """The policy's velocity at a fixed input; `transformer` replaces the policy's own."""
    x, cond = S.prepare(policy, _image(), resolution=32, layers=2, generators=S.seed_generators([0]))
    other = policy if transformer is None else model.Policy(
        pipe=policy.pipe, transformer=transformer, device=policy.device, dtype=policy.dtype,
        prompt_embeds=policy.prompt_embeds, prompt_mask=policy.prompt_mask,
    )  # fmt: skip
    with torch.no_grad():
        return S.predict_velocity(other, x, torch.tensor(700.0), cond.image_latents, cond.img_shapes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A 2-step training run; (its step-2 lora folder, the trained policy's velocity)."""
    from stable_layers.trainer.loop import train

    out = tmp_path_factory.mktemp("run")
    policies: list[Any] = []
    train(_spec(), out, max_steps=2, on_policy_loaded=policies.append)
    lora = out / "checkpoints" / "step-000002" / "lora"
    return lora, _velocity(policies[0])


def test_checkpoint_peft_folder_loads_with_plain_peft(trained: tuple[Path, torch.Tensor]) -> None:
    from peft import PeftModel

    lora, trained_v = trained
    assert {p.name for p in lora.iterdir()} >= {
        model.LORA_WEIGHT_NAME, "adapter_config.json", "adapter_model.safetensors"
    }  # fmt: skip
    base = model.load_policy(_spec(), with_lora=False)
    untouched = _velocity(base)
    fresh = model.tiny_pipeline(seed=0).transformer  # the preset's base weights, no adapter
    peft_model = PeftModel.from_pretrained(fresh, str(lora))
    v = _velocity(base, peft_model)
    torch.testing.assert_close(v, trained_v, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(untouched, trained_v, atol=1e-5), "two training steps must move the adapter"


def test_peft_and_diffusers_files_hold_the_same_adapter(trained: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    lora, trained_v = trained
    diffusers_only = tmp_path / "diffusers"
    diffusers_only.mkdir()
    shutil.copy(lora / model.LORA_WEIGHT_NAME, diffusers_only)
    peft_only = tmp_path / "peft"
    peft_only.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(lora / name, peft_only)
    for source in (diffusers_only, diffusers_only / model.LORA_WEIGHT_NAME, peft_only, lora.parent):
        bare = model.load_policy(_spec(), with_lora=False)
        model.load_adapter(bare, source)
        torch.testing.assert_close(_velocity(bare), trained_v, rtol=1e-5, atol=1e-6, msg=str(source))


def test_lora_init_starts_training_from_an_existing_adapter(trained: tuple[Path, torch.Tensor]) -> None:
    lora, trained_v = trained
    for source in (str(lora), str(lora / model.LORA_WEIGHT_NAME)):
        pol = model.load_policy(_spec(init=source))
        torch.testing.assert_close(_velocity(pol), trained_v, rtol=1e-5, atol=1e-6)
        assert pol.lora_params and all(p.requires_grad and p.dtype == torch.float32 for p in pol.lora_params)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"rank": 8}, r"r=4, alpha=8 but the policy has r=8, alpha=8; set lora\.rank/lora\.alpha"),
        ({"alpha": 16}, r"r=4, alpha=8 but the policy has r=4, alpha=16"),
        (
            {"targets": ["to_q", "to_k"]},
            r"adapts \['attn.add_k_proj'.*lora\.targets gives \['attn.to_k', 'attn.to_q'\]; set lora\.targets",
        ),
    ],
)
def test_lora_init_mismatch_is_one_clear_error(
    trained: tuple[Path, torch.Tensor], lora: dict[str, Any], message: str
) -> None:
    with pytest.raises(model.PolicyLoadError, match=r"^lora\.init: .*" + message):
        model.load_policy(_spec(init=str(trained[0]), **lora))


def test_lora_init_missing_source_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(model.PolicyLoadError, match=r"^lora\.init: .*missing does not exist"):
        model.load_policy(_spec(init=str(tmp_path / "missing")))
