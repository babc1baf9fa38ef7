"""Reward throughput: one G=8 group against a fake judge answering in 200 ms.

Concurrent (semaphore 16: all 8 stage-1 requests and the grid in flight together) vs sequential
(semaphore 1), measured side by side in one run; target ≥ 3×. With `--overlap`, also one training
iteration of the tiny-random model (examples/local-run.yaml) scored by the same judge with and
without overlapped scoring, against sample-only and score-only times.

    .venv/bin/python benchmarks/bench_reward.py [--delay 0.2] [--repeats 3] [--overlap]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reward_helpers import coloured_group  # noqa: E402

from stable_layers.reward import build_scorer  # noqa: E402
from stable_layers.reward.fake_server import FakeJudgeServer  # noqa: E402
from stable_layers.spec import RewardSpec  # noqa: E402


def group_seconds(base_url: str, concurrency: int, repeats: int) -> float:
    spec = RewardSpec(kind="openai", tile_size=128)
    spec.openai.base_url = base_url
    spec.openai.max_concurrency = concurrency
    group = coloured_group(8)

    async def run() -> list[float]:
        scorer = build_scorer(spec)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            await scorer.score_group(group)
            times.append(time.perf_counter() - t0)
        await scorer.aclose()
        return times

    return statistics.median(asyncio.run(run()))


def overlap_iteration(base_url: str) -> dict[str, float]:
    import tempfile

    from stable_layers.spec import load_run_spec
    from stable_layers.trainer.loop import train

    out = {}
    for label, kind, overlap in (
        ("sample_only", "pixel", True),
        ("overlap", "openai", True),
        ("no_overlap", "openai", False),
    ):
        spec = load_run_spec(ROOT / "examples" / "local-run.yaml")
        spec.reward.kind = kind
        spec.reward.openai.base_url = base_url
        spec.reward.tile_size = 64
        with tempfile.TemporaryDirectory() as d:
            rec = train(spec, Path(d) / "run", max_steps=1, overlap_scoring=overlap)
        out[label] = rec["rollout_seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overlap", action="store_true")
    args = ap.parse_args()
    with FakeJudgeServer(delay=args.delay) as srv:
        seq = group_seconds(srv.base_url, 1, args.repeats)
        conc = group_seconds(srv.base_url, 16, args.repeats)
        print(f"G=8 group, judge latency {args.delay * 1000:.0f} ms, 9 requests (8 panels + grid)")
        print(f"  sequential  {seq:.3f} s")
        print(f"  concurrent  {conc:.3f} s")
        print(f"  speed-up    {seq / conc:.1f}x (target >= 3x)")
        if args.overlap:
            t = overlap_iteration(srv.base_url)
            n_groups = 2
            score_only = n_groups * conc
            print("one training iteration (tiny-random, 2 groups of 4), rollout+scoring seconds:")
            print(f"  sample only (pixel reward) {t['sample_only']:.2f} s; score only ≈ {score_only:.2f} s")
            print(f"  overlap {t['overlap']:.2f} s, no overlap {t['no_overlap']:.2f} s")
            print(
                f"  overlap / max(sample, score) = {t['overlap'] / max(t['sample_only'], score_only):.2f} (target <= 1.1)"
            )


if __name__ == "__main__":
    main()
