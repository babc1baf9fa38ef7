"""Group rollout: one batched G-candidate rollout vs G sequential single-sample rollouts.

Two comparisons, measured side by side in one run on the tiny random model:

  A. at the pipeline's 640 bucket (the only sizes `__call__` accepts): `sample_group` (G candidates
     in batched forwards, condition encoded once) + `decode`, vs G sequential
     `QwenImageLayeredPipeline.__call__`s with the same initial latents, steps, layers, CFG off;
  B. at a small working size (64 px, where `__call__` cannot run): `sample_group` with G
     candidates vs G sequential `sample_group` calls with one candidate each (the same loop, so
     the ratio isolates batching), with and without decoding.

Run: .venv/bin/python benchmarks/bench_rollout.py [--group 8] [--steps 10] [--layers 2] [--skip-call]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

from stable_layers.policy import model
from stable_layers.policy import sampler as S
from stable_layers.spec import RunSpec


def _image(size: int) -> np.ndarray:
    img = np.zeros((size, size, 4), np.uint8)
    img[..., 2] = 180
    img[..., 3] = 255
    img[size // 4 : size // 2, size // 4 : 3 * size // 4, :3] = (230, 40, 40)
    return img


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _spec(resolution: int, steps: int, layers: int) -> RunSpec:
    return RunSpec.model_validate(
        {
            "model": {"preset": "tiny-random"},
            "sampler": {
                "resolution": resolution,
                "layers": layers,
                "trainSteps": steps,
                "sdeWindowSize": 2,
                "sdeWindowRange": [0, steps - 1],
                "noiseLevel": 1.2,
            },
        }
    )


def bench_vs_call(group: int, steps: int, layers: int, repeats: int) -> tuple[float, float]:
    spec = _spec(640, steps, layers)
    pol = model.load_policy(spec, with_lora=False)
    img = _image(640)
    seeds = list(range(group))

    def batched() -> None:
        ro = S.sample_group(pol, img, group_size=group, sampler=spec.sampler, seeds=seeds, window_start=0)
        S.decode(pol, ro.final_latents, ro)

    inits = [S.prepare(pol, img, resolution=640, layers=layers, generators=S.seed_generators([s]))[0] for s in seeds]
    pil = Image.fromarray(img, "RGBA")

    def sequential_call() -> None:
        for lat in inits:
            pol.pipe(
                image=pil,
                prompt=["placeholder"],
                prompt_embeds=pol.prompt_embeds,
                prompt_embeds_mask=pol.prompt_mask,
                true_cfg_scale=1.0,
                layers=layers,
                num_inference_steps=steps,
                resolution=640,
                latents=lat,
                output_type="np",
            )

    return _best(batched, repeats), _best(sequential_call, repeats)


def bench_small(group: int, steps: int, layers: int, repeats: int, decode: bool) -> tuple[float, float]:
    spec = _spec(64, steps, layers)
    pol = model.load_policy(spec)
    img = _image(64)

    def run(g: int, seeds: list[int]) -> None:
        ro = S.sample_group(pol, img, group_size=g, sampler=spec.sampler, seeds=seeds, window_start=0)
        if decode:
            S.decode(pol, ro.final_latents, ro)

    run(group, list(range(group)))  # warm-up (RoPE caches, allocator)
    batched = _best(lambda: run(group, list(range(group))), repeats)
    sequential = _best(lambda: [run(1, [s]) for s in range(group)], repeats)
    return batched, sequential


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="denoising steps (training default 10)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the small runs (the 640 runs use 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-call", action="store_true", help="skip comparison A (slow on CPU: VAE at 640 px)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g, k, n_layers = args.group, args.steps, args.layers
    print(f"tiny random model, G={g}, steps={k}, layers={n_layers}, torch threads={args.threads}, CFG off")
    rows = []
    for decode in (False, True):
        b, s = bench_small(g, k, n_layers, args.repeats, decode)
        label = "64px  sample_group(G) vs G x sample_group(1)" + (" + decode" if decode else "")
        rows.append((label, b, s))
    if not args.skip_call:
        b, s = bench_vs_call(g, k, n_layers, 1)
        rows.append(("640px sample_group(G) + decode vs G x __call__", b, s))
    print(f"{'comparison':<55} {'batched s':>10} {'sequential s':>13} {'ratio':>7}")
    for label, b, s in rows:
        print(f"{label:<55} {b:>10.3f} {s:>13.3f} {s / b:>6.2f}x")


if __name__ == "__main__":
    main()
