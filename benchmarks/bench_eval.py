"""LayerD-protocol evaluation speed: one 512-px design with 6 predicted and 6 GT layers.

Prints seconds per design (one process) and designs per second over 100 designs with one process
and with a pool of 2 (the dev box's cores), measured side by side in one run, plus the A.7 metrics'
cost per design for reference.

    .venv/bin/python benchmarks/bench_eval.py [--designs 100] [--size 512] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

from stable_layers.eval.layerd import evaluate_pair
from stable_layers.eval.metrics import design_metrics
from stable_layers.layers import composite, to_uint8
from stable_layers.spec import EvalThresholds

DISTINCT = 10
"""Distinct designs, reused cyclically and cached per process, so the timed loops measure the
protocol rather than test-data generation or pickling 12 MB of layers per job."""


@functools.lru_cache(maxsize=DISTINCT)
def design(seed: int, size: int, n_layers: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """GT: textured background + 5 overlapping soft-edged boxes/discs. Prediction: the same
    elements slightly shifted, with colour noise and faint alpha haze (like diffusion output)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    bg = np.concatenate([rng.integers(0, 256, (size, size, 3)), np.full((size, size, 1), 255)], -1).astype(np.uint8)
    gt, pred = [bg], [np.clip(bg.astype(int) + rng.integers(-8, 9, bg.shape), 0, 255).astype(np.uint8)]
    pred[0][..., 3] = 255
    for _ in range(n_layers - 1):
        cy, cx = rng.integers(size // 6, 5 * size // 6, 2)
        r = int(rng.integers(size // 10, size // 4))
        dist = np.hypot(yy - cy, xx - cx) if rng.random() < 0.5 else np.maximum(abs(yy - cy), abs(xx - cx))
        colour = rng.integers(0, 256, 3)
        for target, shift, noise in ((gt, 0, 0), (pred, int(rng.integers(-4, 5)), 12)):
            a = np.clip(r - np.roll(dist, shift, axis=1), 0, 1)
            lay = np.zeros((size, size, 4), np.uint8)
            lay[..., :3] = np.clip(colour + rng.integers(-noise, noise + 1, (size, size, 3)), 0, 255)
            alpha = a * 255 + (rng.random((size, size)) < 0.02) * 3 * (noise > 0)
            lay[..., 3] = np.clip(alpha, 0, 255).astype(np.uint8)
            lay[lay[..., 3] == 0, :3] = 0
            target.append(lay)
    return pred, gt


def warm(size: int) -> None:
    for seed in range(DISTINCT):
        design(seed, size)


def score(args: tuple[int, int]) -> float:
    """Evaluate one design; returns the CPU seconds it took in this process (wall time on a shared
    machine mostly measures the other tenants)."""
    pred, gt = design(args[0] % DISTINCT, args[1])
    c0 = time.process_time()
    evaluate_pair(pred, gt, max_edits=5)
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    pred, gt = design(0, args.size)
    evaluate_pair(pred, gt)  # warm-up
    times, levels = [], 0
    for seed in range(5):
        p, g = design(seed, args.size)
        t0 = time.perf_counter()
        levels = len(evaluate_pair(p, g, max_edits=5))
        times.append(time.perf_counter() - t0)
    per_design = statistics.median(times)
    print(
        f"one design, {args.size}px, 6 pred + 6 GT layers: {per_design:.3f} s (median of 5; last had {levels} levels)"
    )
    image = to_uint8(composite(gt, background=1.0))
    t0 = time.perf_counter()
    design_metrics(pred, image, EvalThresholds(), gt)
    print(f"A.7 metrics of one design: {time.perf_counter() - t0:.3f} s")

    jobs = [(seed, args.size) for seed in range(args.designs)]
    for seed in range(DISTINCT):
        design(seed, args.size)  # the serial run gets its cache filled outside the timing
    t0 = time.perf_counter()
    serial_cpu = sum(score(job) for job in jobs)
    serial = time.perf_counter() - t0
    with ProcessPoolExecutor(
        args.workers, mp_context=get_context("spawn"), initializer=warm, initargs=(args.size,)
    ) as pool:
        list(pool.map(score, jobs[: 2 * args.workers]))  # start every worker (and fill its cache) untimed
        t0 = time.perf_counter()
        parallel_cpu = sum(pool.map(score, jobs, chunksize=4))
        parallel = time.perf_counter() - t0
    print(
        f"{args.designs} designs, 1 process: {args.designs / serial:.2f} designs/s ({serial:.1f} s wall, "
        f"{serial_cpu / args.designs:.3f} CPU s/design)"
    )
    print(
        f"{args.designs} designs, {args.workers} processes: {args.designs / parallel:.2f} designs/s "
        f"({parallel:.1f} s wall, {parallel_cpu / args.designs:.3f} CPU s/design)"
    )
    print(f"wall-clock speed-up {serial / parallel:.2f}x")
    print(f"CPU-bound ceiling on {args.workers} idle cores: {args.workers * args.designs / parallel_cpu:.1f} designs/s")
    print(f"load average after the run (other tenants of the machine): {os.getloadavg()}")


if __name__ == "__main__":
    main()
