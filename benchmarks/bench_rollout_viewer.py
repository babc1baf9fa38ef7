"""Rollout viewer: build time, peak memory and page sizes, paged vs one page per step.

Writes a synthetic run of rollout records (G candidates × L layers of SIZE px, random RGBA noise,
the worst case for PNG size) with the real recorder, then builds the viewer twice side by side:
`--per-page 10` (the default) and every group of a step on one page. Peak memory is Python's
(tracemalloc: the inlined base64 strings and decoded arrays), the quantity paging bounds.

    .venv/bin/python benchmarks/bench_rollout_viewer.py [--steps 2] [--groups 40] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from stable_layers.observability import build_viewer
from stable_layers.observability.rollouts import RolloutRecorder
from stable_layers.reward.base import Candidate, CandidateScore, Group, GroupScore
from stable_layers.storage import open_store


def write_run(root: Path, steps: int, groups: int, g: int, layers: int, size: int) -> None:
    rng = np.random.default_rng(0)
    rec = RolloutRecorder(open_store(root), rate=1.0, background=False)
    for s in range(steps):
        for k in range(groups):
            img = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
            cands = [
                Candidate([rng.integers(0, 256, (size, size, 4), dtype=np.uint8) for _ in range(layers)])
                for _ in range(g)
            ]
            rewards = rng.random(g).tolist()
            score = GroupScore(f"img-{k}", [CandidateScore(reward=r, stages={"1": r}) for r in rewards], {})
            rec.on_group(s, Group(f"img-{k}", img, cands), score, [0.0] * g)


def measure(run: Path, out: Path, per_page: int) -> dict[str, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    res = build_viewer(run, out, per_page=per_page)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sizes = [(out / p).stat().st_size for p in res.pages]
    return {
        "seconds": seconds,
        "peak_mb": peak / 2**20,
        "pages": len(res.pages),
        "largest_page_mb": max(sizes) / 2**20,
        "index_kb": (out / "index.html").stat().st_size / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--groups", type=int, default=40, help="recorded groups per step")
    ap.add_argument("--g", type=int, default=8, help="candidates per group")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        write_run(run, args.steps, args.groups, args.g, args.layers, args.size)
        print(
            f"records: {args.steps} steps × {args.groups} groups × {args.g} candidates × {args.layers} layers "
            f"of {args.size} px ({time.perf_counter() - t0:.1f} s to write)"
        )
        paged = measure(run, Path(tmp) / "paged", 10)
        whole = measure(run, Path(tmp) / "whole", args.groups)
        print(f"{'':24}{'per-page 10':>14}{'one page/step':>16}{'ratio':>9}")
        for key in ("seconds", "peak_mb", "pages", "largest_page_mb", "index_kb"):
            a, b = paged[key], whole[key]
            print(f"{key:24}{a:14.2f}{b:16.2f}{(b / a if a else float('nan')):9.2f}")
        n = args.steps * args.groups
        print(f"per group (paged): {paged['seconds'] / n * 1000:.0f} ms")


if __name__ == "__main__":
    main()
