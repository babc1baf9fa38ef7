"""`stable-layers eval` says which protocol produced its numbers, and samples with the spec's
`sampler.evalSampler`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stable_layers.eval.runner import run_evaluation, sampling_settings
from stable_layers.spec import RunSpec, protocol_of


def _spec(sampler: dict[str, Any] | None = None, **ev: Any) -> RunSpec:
    body: dict[str, Any] = {"model": {"preset": "tiny-random"}, "lora": {"rank": 4, "alpha": 8}}
    body["sampler"] = sampler or {}
    body["eval"] = {"workers": 1, "heldoutSize": 48, "bootstrap": 0, "gallery": 0, **ev}
    return RunSpec.model_validate(body)


def test_default_spec_is_the_release_protocol_up_to_the_layer_count() -> None:
    assert protocol_of(sampling_settings(_spec())) == ("release", ["layers 'gt' (protocol: 4)"])
    assert protocol_of(sampling_settings(_spec(layers=4))) == ("release", [])


def test_qil_and_custom_settings_are_named() -> None:
    qil = _spec({"evalSampler": "euler", "cfgScale": 4.0, "cfgNormalize": True}, layers=4)
    assert protocol_of(sampling_settings(qil)) == ("qil", [])
    assert protocol_of(sampling_settings(_spec({"evalSteps": 20})))[0] == "custom"
    assert protocol_of(sampling_settings(_spec({"evalSampler": "euler"})))[0] == "custom"


def test_report_names_the_protocol_and_the_model_samples_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stable_layers.policy as P

    calls: list[dict[str, Any]] = []

    def spy(policy: Any, images: list[np.ndarray], **kw: Any) -> list[list[np.ndarray]]:
        calls.append(kw)
        h, w = images[0].shape[:2]
        return [[np.full((h, w, 4), 255, np.uint8)] + [np.zeros((h, w, 4), np.uint8)] * (kw["layers"] - 1)]

    monkeypatch.setattr(P, "decompose", spy)
    spec = _spec({"resolution": 32}, layers=4)
    rep = run_evaluation(spec, "synthetic:heldout", tmp_path, limit=1)
    assert calls and all(c["method"] == "heun" and c["steps"] == 50 and c["cfg_scale"] == 1.0 for c in calls)
    assert rep["protocol"]["name"] == "custom"  # resolution 32, not the release's 640
    assert rep["settings"]["sampler"] == "heun" and rep["settings"]["prompt"] == "a clean, well composed image"
    assert rep["notes"][0].startswith("Protocol: every number was produced with custom settings")


def test_caller_supplied_decomposers_are_not_labelled_with_the_spec_protocol(tmp_path: Path) -> None:
    def perfect(image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
        return [image] + [np.zeros_like(image)] * (n - 1)

    rep = run_evaluation(_spec(), "synthetic:heldout", tmp_path, limit=1, decomposers={"base": perfect})
    assert rep["protocol"]["decomposers"] == "caller-supplied decomposers"
    assert "not applicable" in rep["notes"][0]


def test_eval_takes_a_peft_adapter_folder(tmp_path: Path) -> None:
    """A PEFT-only folder (the format the Stable-Layers release ships) is a valid --checkpoint."""
    import shutil

    import torch

    from stable_layers.policy import model

    spec = _spec({"resolution": 32, "evalSteps": 2, "layers": 2}, layers=2)
    policy = model.load_policy(spec)
    with torch.no_grad():
        for p in policy.lora_params:
            p.normal_(0.0, 0.3)
    model.save_lora(policy, tmp_path / "both")
    peft_only = tmp_path / "peft"
    peft_only.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp_path / "both" / name, peft_only)
    rep = run_evaluation(spec, "synthetic:heldout", tmp_path / "rep", checkpoint=str(peft_only), limit=1)
    assert set(rep["summary"]["models"]) == {"base", "finetuned"}
    base, tuned = (rep["designs"][0][m]["metrics"] for m in ("base", "finetuned"))
    assert base != tuned  # the adapter was applied
