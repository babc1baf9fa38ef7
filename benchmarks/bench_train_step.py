"""Training step cost on the tiny model: seconds per sample, peak RSS, and side-by-side ratios.

Runs the real loop (`stable_layers.trainer.loop.train`) on the tiny-random pipeline at 64 px, L=2,
G=4, 2 images per iteration, 2 optimizer steps per iteration, and compares in one process:

  * replay micro-batch 1 vs 4 (= the rollout batch; method.md §1.3H recommends equal sizes)
  * KL to the reference off vs on (one extra adapter-disabled forward per trained step)
  * reward scoring overlapped with sampling vs not, with a scorer that waits 0.3 s per group
    (a stand-in for a remote VLM judge)

Usage: .venv/bin/python benchmarks/bench_train_step.py [--iterations N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from stable_layers.reward.base import Group, GroupScore
from stable_layers.reward.pixel import PixelScorer
from stable_layers.spec import parse_run_spec
from stable_layers.trainer.loop import train

BASE: dict[str, Any] = {
    "model": {"preset": "tiny-random", "device": "cpu", "gradientCheckpointing": False},
    "lora": {"rank": 4, "alpha": 8},
    "data": {"kind": "synthetic", "numImages": 16, "seed": 0},
    "sampler": {"trainSteps": 4, "sdeWindowSize": 2, "sdeWindowRange": [0, 2], "resolution": 64, "layers": 2},
    "grpo": {"groupSize": 4, "imagesPerIteration": 2, "lr": 1e-3},
    "distributed": {"engine": "torch"},
    "checkpoint": {"everySteps": 1000},
}


class SlowScorer:
    """The pixel scorer behind a fixed network-like delay per group."""

    name = "slow-pixel"

    def __init__(self, delay: float):
        self.inner, self.delay = PixelScorer(), delay

    async def score_group(self, group: Group) -> GroupScore:
        await asyncio.sleep(self.delay)
        return await self.inner.score_group(group)

    async def aclose(self) -> None:
        pass


def _merge(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    return {k: {**v, **sections.get(k, {})} if isinstance(v, dict) else v for k, v in base.items()}


def run(label: str, spec_dict: dict[str, Any], iterations: int, **kwargs: Any) -> dict[str, float]:
    spec = parse_run_spec(spec_dict)
    steps = iterations * spec.grpo.optimizer_steps_per_iteration
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        train(spec, out, max_steps=steps, **kwargs)
        wall = time.perf_counter() - t0
        recs = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    recs = recs[spec.grpo.optimizer_steps_per_iteration :]  # drop the first iteration (warm-up)
    per_iter = spec.grpo.images_per_iteration * spec.grpo.group_size
    update = statistics.median(r["update_seconds"] / max(1, r["samples"]) for r in recs)
    iteration = statistics.median(r["rollout_seconds"] for r in recs[::2]) + sum(r["update_seconds"] for r in recs) / (
        len(recs) / 2
    )
    res = {
        "update_s_per_sample": update,
        "iteration_s_per_sample": iteration / per_iter,
        "step_seconds": statistics.median(r["step_seconds"] for r in recs),
        "score_wait_s": statistics.median(r["score_wait_seconds"] for r in recs),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
    }
    print(f"{label:<28}" + "  ".join(f"{k}={v:.4f}" for k, v in res.items()), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.iterations
    print("tiny-random, 64 px, L=2, G=4, 2 images/iteration, K=2 trained steps, torch engine, 1 thread")
    mb1 = run("micro-batch 1", BASE, n)
    mb4 = run("micro-batch 4", _merge(BASE, grpo={"microBatchSize": 4}), n)
    kl = run("micro-batch 1 + KL", _merge(BASE, grpo={"klBeta": 0.01}), n)
    seq = run("slow judge, no overlap", BASE, n, scorer=SlowScorer(0.3), overlap_scoring=False)
    ovl = run("slow judge, overlap", BASE, n, scorer=SlowScorer(0.3), overlap_scoring=True)
    print("ratios (side by side, this run):")
    print(
        f"  update time per sample, micro-batch 1 / 4:   {mb1['update_s_per_sample'] / mb4['update_s_per_sample']:.2f}x"
    )
    print(
        f"  update time per sample, KL on / off:         {kl['update_s_per_sample'] / mb1['update_s_per_sample']:.2f}x"
    )
    print(
        f"  iteration time, no overlap / overlap:        {seq['iteration_s_per_sample'] / ovl['iteration_s_per_sample']:.2f}x"
    )
    print(f"  peak RSS of the process: {max(r['peak_rss_mb'] for r in (mb1, mb4, kl, seq, ovl)):.0f} MB")


if __name__ == "__main__":
    main()
