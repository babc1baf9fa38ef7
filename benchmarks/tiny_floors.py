"""How low LayerD's RGB L1 at k = 0 can go for the tiny preset, next to the copy baseline.

Per layer count L, on held-out designs at 256 px: the "composite copied into every layer"
baseline, the VAE oracle (the ground-truth layers through the working size and the VAE round trip,
`pretrain.card.vae_oracle`) and the ground-truth layers only resized to the working size and back
(no VAE). The oracle is what a perfect transformer would score; the resize row separates the
working size's share of that floor from the VAE's.

    .venv/bin/python benchmarks/tiny_floors.py [--designs 64] [--pipeline workers/stable_layers/assets/tiny]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from stable_layers.data.synthetic import make_design, split_seeds
    from stable_layers.eval.runner import score_design
    from stable_layers.layers import as_rgba_array, resize_layer
    from stable_layers.pretrain.card import load_base, trivial_copy, vae_oracle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pipeline", default=str(Path(__file__).parents[1] / "workers/stable_layers/assets/tiny"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy, spec = load_base(Path(args.pipeline))
    res = 64  # the tiny preset's working size
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    for seed in split_seeds("heldout", args.designs):
        d = make_design(seed, args.size)
        image, gt = as_rgba_array(d.image), d.layers
        size = (args.size, args.size)
        stacks = {
            "copy": trivial_copy(image, len(gt)),
            "vae_oracle": vae_oracle(policy, gt, res),
            "resize_only": [resize_layer(resize_layer(g, (res, res)), size) for g in gt],
        }
        for name, stack in stacks.items():
            l1 = score_design(stack, gt, image, spec.eval.thresholds, spec.eval.max_edits).layerd[0]["rgb_l1"]
            rows[(str(len(gt)), name)].append(l1)
            rows[("all", name)].append(l1)
    print(f"LayerD RGB L1 at k=0, {args.designs} held-out designs at {args.size} px")
    print(f"{'L':>4} {'n':>4} {'copy':>8} {'vae_oracle':>11} {'resize_only':>12}")
    for key in sorted({k for k, _ in rows}, key=lambda k: (k == "all", k)):
        vals = [float(np.mean(rows[(key, n)])) for n in ("copy", "vae_oracle", "resize_only")]
        print(f"{key:>4} {len(rows[(key, 'copy')]):>4} {vals[0]:8.3f} {vals[1]:11.3f} {vals[2]:12.3f}")


if __name__ == "__main__":
    main()
