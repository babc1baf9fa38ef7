"""Heun vs Euler on the shipped tiny model (tiny-random when it is not installed), side by side.

For each of N held-out synthetic designs: wall time and transformer calls of Heun and Euler at
50 steps, and the distance of the final latents to a converged solution (Heun, `--ref-steps`) at equal
transformer calls (Heun S steps = 2S − 1 calls vs Euler 2S − 1 steps). Prints ratios.

    .venv/bin/python benchmarks/bench_heun.py [--designs 4] [--resolution 64]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--ref-steps", type=int, default=200, help="Heun steps of the converged solution")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from stable_layers.data import make_design, split_seeds
    from stable_layers.policy import load_policy, ode_sample, tiny_installed
    from stable_layers.policy import sampler as S
    from stable_layers.spec import RunSpec

    preset = "tiny" if tiny_installed() else "tiny-random"
    policy = load_policy(RunSpec.model_validate({"model": {"preset": preset, "device": "cpu"}}), with_lora=False)
    calls = [0]
    policy.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def run(latents: torch.Tensor, cond: S.Condition, steps: int, method: str) -> tuple[torch.Tensor, float, int]:
        calls[0] = 0
        t0 = time.perf_counter()
        out = ode_sample(policy, latents, cond, steps, method=method)  # type: ignore[arg-type]
        return out, time.perf_counter() - t0, calls[0]

    rows: dict[str, list[float]] = {}
    for seed in split_seeds("heldout", args.designs):
        d = make_design(seed, args.resolution)
        latents, cond = S.prepare(
            policy, d.image, resolution=args.resolution, layers=len(d.layers), generators=S.seed_generators([seed])
        )
        ref, ref_seconds, _ = run(latents, cond, args.ref_steps, "heun")
        print(f"design {d.id}: {len(d.layers)} layers, reference {ref_seconds:.1f} s", flush=True)
        for name, steps, method in (
            ("heun-50", 50, "heun"),
            ("euler-50", 50, "euler"),
            ("heun-10", 10, "heun"),
            ("euler-19", 19, "euler"),
            ("heun-25", 25, "heun"),
            ("euler-49", 49, "euler"),
        ):
            out, seconds, n = run(latents, cond, steps, method)
            rows.setdefault(f"{name} seconds", []).append(seconds)
            rows.setdefault(f"{name} calls", []).append(n)
            rows.setdefault(f"{name} err", []).append(float((out - ref).abs().mean()))

    def mean(key: str) -> float:
        return sum(rows[key]) / len(rows[key])

    print(
        f"model {preset}, {args.designs} designs at {args.resolution} px, reference Heun {args.ref_steps} steps, "
        f"CPU threads {torch.get_num_threads()}"
    )
    for name in ("heun-50", "euler-50", "heun-10", "euler-19", "heun-25", "euler-49"):
        print(
            f"{name:9s} calls {mean(name + ' calls'):5.0f}  seconds {mean(name + ' seconds'):7.3f}  "
            f"mean |x - x_ref| {mean(name + ' err'):.5f}"
        )
    print(f"time ratio heun-50 / euler-50: {mean('heun-50 seconds') / mean('euler-50 seconds'):.2f}")
    print(f"calls ratio heun-50 / euler-50: {mean('heun-50 calls') / mean('euler-50 calls'):.2f}")
    for h, e in (("heun-10", "euler-19"), ("heun-25", "euler-49")):
        print(f"error ratio {h} / {e} (equal calls): {mean(h + ' err') / mean(e + ' err'):.3f}")


if __name__ == "__main__":
    main()
