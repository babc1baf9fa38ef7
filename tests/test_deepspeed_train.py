"""2-process DeepSpeed ZeRO-2 (CPU, gloo) ≡ 1-process plain torch: same global batch, same LoRA.

The 2-process run goes through the real entry point: `stable-layers train --nproc-per-node 2`
launches its own workers with torch.distributed.run; each rank samples half of the groups, rewards
and keys are all-gathered, DeepSpeed reduces the gradients. Also: the generated DeepSpeed config
passes DeepSpeed's own validation and bad combinations are rejected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stable_layers.spec import SpecError, parse_run_spec

SPEC = {
    "name": "ds-test",
    "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "data": {"kind": "synthetic", "numImages": 4, "seed": 3},
    "sampler": {"trainSteps": 3, "sdeWindowSize": 1, "sdeWindowRange": [0, 2], "resolution": 32, "layers": 2},
    "grpo": {"groupSize": 3, "imagesPerIteration": 2, "lr": 0.01, "clipRange": 0.01, "maxSteps": 4},
    "distributed": {"engine": "deepspeed", "zeroStage": 2},
    "checkpoint": {"everySteps": 100},
}


def _lora(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (step,) = sorted((run / "checkpoints").glob("step-*"))
    return load_file(step / "lora" / "pytorch_lora_weights.safetensors")


def _two_ranks_vs_one(tmp_path: Path, spec: dict, atol: float = 1e-6) -> None:
    from stable_layers.trainer.distributed import free_port
    from stable_layers.trainer.loop import train

    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "stable_layers.cli", "train", str(spec_file), "--out", str(tmp_path / "multi")]
    proc = subprocess.run([*cli, "--nproc-per-node", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    train(parse_run_spec({**spec, "distributed": {"engine": "torch"}}), tmp_path / "single")

    got, want = _lora(tmp_path / "multi"), _lora(tmp_path / "single")
    assert got.keys() == want.keys()
    moved = 0.0
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol)
        if "lora_B" in key:
            moved = max(moved, want[key].abs().max().item())
    assert moved > 1e-3, f"LoRA B barely moved ({moved}); the comparison would be vacuous"
    single = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    multi = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(multi) == len(single) == spec["grpo"]["maxSteps"]  # rank 0 alone writes
    for a, b in zip(single, multi, strict=True):
        ra, rb = json.loads(a), json.loads(b)
        for key in ("reward_mean", "group_std_mean", "clipfrac"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4), key
        for key in ("approx_kl", "ratio_std"):  # on-policy steps: both are fp32 noise around 0
            assert rb[key] == pytest.approx(ra[key], rel=1e-2, abs=1e-6), key


@pytest.mark.system
@pytest.mark.slow
def test_two_rank_zero2_equals_one_process_torch(tmp_path):
    _two_ranks_vs_one(tmp_path, SPEC)


@pytest.mark.system
@pytest.mark.slow
def test_group_split_over_two_torch_ranks_equals_one_process(tmp_path):
    """One image of 4 candidates on 2 ranks: the group's layers are gathered to rank 0 for scoring,
    the torch engine all-reduces gradients by hand. Each rank samples 2 candidates per forward
    instead of 4, which changes CPU matmul rounding (~1e-7) along the rollout; after 4 Adam steps
    that is ~1e-5 on the LoRA, two orders below what a wrong reduction or weighting gives (the
    weights move by > 1e-3)."""
    spec = {
        **SPEC,
        "grpo": {**SPEC["grpo"], "groupSize": 4, "imagesPerIteration": 1},
        "distributed": {"engine": "torch"},
    }
    _two_ranks_vs_one(tmp_path, spec, atol=1e-4)


def test_generated_deepspeed_config_is_valid():
    from stable_layers.trainer.distributed import check_deepspeed_config, deepspeed_config

    spec = parse_run_spec(SPEC)
    cfg = deepspeed_config(spec, world_size=2)
    check_deepspeed_config(cfg, world_size=2)
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["gradient_clipping"] == spec.grpo.max_grad_norm
    # 2 images x 3 candidates over 2 ranks = 3 micro-batches per rank, 2 steps per iteration
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["train_batch_size"] == 2
    with pytest.raises(SpecError, match="train_batch_size"):
        check_deepspeed_config({**cfg, "train_batch_size": 7}, world_size=2)
    with pytest.raises(SpecError, match="DeepSpeed rejects"):
        check_deepspeed_config({**cfg, "zero_optimization": {"stage": 2, "offload_optimiser": {}}}, world_size=2)


def test_layout_must_split_evenly():
    from stable_layers.trainer.collect import check_layout, rank_slots

    spec = parse_run_spec(SPEC)
    with pytest.raises(SpecError, match="imagesPerIteration"):
        check_layout(spec, 4)  # 6 candidates over 4 ranks
    check_layout(spec, 3)
    slots = [rank_slots(spec, r, 3) for r in range(3)]
    assert slots[1] == [(0, 2), (1, 0)]  # the group of image 0 is split over ranks 0 and 1
    assert sorted(s for part in slots for s in part) == [(i, c) for i in range(2) for c in range(3)]
