"""Resume: a run interrupted at a checkpoint and resumed gives the same next-step metrics and the same
weights as the uninterrupted run (CPU, seeds); partial checkpoints are ignored; the loop writes what
the operator reads (metrics.jsonl, progress.json, committed checkpoints, retention)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stable_layers import storage
from stable_layers.spec import parse_run_spec

TIMING = {"time", "step_seconds", "samples_per_second", "rollout_seconds", "score_wait_seconds", "update_seconds"}
TIMING |= {"scorer_score_seconds"}

SPEC = {
    "name": "resume-test",
    "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "data": {"kind": "synthetic", "numImages": 3, "seed": 1},  # 3 images, 2 per iteration: crosses epochs
    "sampler": {"trainSteps": 3, "sdeWindowSize": 1, "sdeWindowRange": [0, 2], "resolution": 32, "layers": 2},
    "grpo": {
        "groupSize": 3,
        "imagesPerIteration": 2,
        "lr": 0.01,
        "clipRange": 0.01,
        "klBeta": 0.01,  # exercise the reference-model path
        "ema": True,
        "emaEvery": 1,
    },
    "distributed": {"engine": "torch"},
    "checkpoint": {"everySteps": 2, "keep": 2},
}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _strip(rec: dict) -> dict:
    return {
        k: v for k, v in rec.items() if (k not in TIMING and not k.startswith("scorer_")) or k == "scorer_reward_std"
    }


def _lora(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:06d}" / "lora" / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from stable_layers.trainer.loop import train

    spec = parse_run_spec(SPEC)
    full = tmp_path_factory.mktemp("full")
    train(spec, full, max_steps=6)
    cut = tmp_path_factory.mktemp("cut")
    train(spec, cut, max_steps=2)
    # a crashed upload of a later checkpoint: files but no COMMITTED marker
    partial = cut / "checkpoints" / "step-000004"
    (partial / "lora").mkdir(parents=True)
    (partial / "trainer.pt").write_bytes(b"half a file")
    train(spec, cut, max_steps=6, resume=True)
    return full, cut


def test_resumed_run_matches_uninterrupted(runs):
    full, cut = runs
    a, b = _metrics(full), _metrics(cut)
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b, strict=True):
        assert _strip(ra) == _strip(rb), f"step {ra['step']} differs after resume"
    for key, value in _lora(full, 6).items():
        assert torch.equal(value, _lora(cut, 6)[key]), key


def test_training_moves_the_policy_and_reports_diagnostics(runs):
    full, _ = runs
    recs = _metrics(full)
    required = {"step", "reward_mean", "reward_std", "group_std_mean", "zero_std_ratio", "loss", "kl", "approx_kl",
                "clipfrac", "step_seconds", "samples_per_second", "clipfrac_gt_one", "clipfrac_lt_one", "ratio_mean",
                "ratio_std", "log_ratio_std"}  # fmt: skip
    for rec in recs:
        assert required <= rec.keys()
        assert all(f"reward_{c}" in rec for c in ("alpha_cleanliness", "content_validity"))
    first, second = recs[0], recs[1]  # step 1 is on-policy, step 2 (same iteration) is not
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and first["approx_kl"] < 1e-10
    assert second["approx_kl"] > 1e-12 and second["ratio_std"] > 0
    assert recs[-1]["kl"] > 0  # the LoRA has moved away from the adapter-disabled reference
    assert recs[0]["iteration"] == recs[1]["iteration"] != recs[2]["iteration"]
    assert any(not torch.equal(v, _lora(full, 4)[k]) for k, v in _lora(full, 6).items())


def test_checkpoints_progress_and_retention(runs):
    full, cut = runs
    store = storage.open_store(full)
    assert storage.committed_steps(store) == [4, 6]  # keep 2
    assert storage.list_checkpoints(storage.open_store(cut)) == {4: True, 6: True}  # the partial 4 was replaced
    progress = storage.read_progress(store)
    assert progress["phase"] == "Succeeded" and progress["step"] == 6 and progress["maxSteps"] == 6
    assert progress["lastCheckpoint"]["step"] == 6
    assert progress["rewardMean"] == pytest.approx(_metrics(full)[-1]["reward_mean"])
    state = json.loads((full / "checkpoints" / "step-000006" / "trainer.json").read_text())
    assert state["step"] == 6 and state["iteration"] == 3
    assert (state["epoch"], state["offset"]) == (1, 3)  # 6 images of a 3-image source; rolls over lazily


def test_fresh_start_refuses_existing_run(runs, tmp_path):
    from stable_layers.trainer.loop import TrainError, train

    full, _ = runs
    with pytest.raises(TrainError, match="--resume"):
        train(parse_run_spec(SPEC), full, max_steps=1)
