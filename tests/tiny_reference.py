"""The fixed-seed output of the shipped tiny model that `test_pretrain_shipped.py` pins down.

Shared by the test and `scripts/make_tiny_reference.py` so both compute exactly the same thing:
the product path (`model.load_policy` with `model.preset: tiny` → `from_pretrained`), one held-out
design, `policy.decompose` (Euler) with a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "tiny_reference.npz"
STEPS = 6
SEED = 0
SIZE = 64


def reference_output() -> dict[str, np.ndarray]:
    import torch

    from stable_layers.data.synthetic import make_design, split_seeds
    from stable_layers.policy import decompose, sampler
    from stable_layers.policy.model import load_policy
    from stable_layers.spec import RunSpec

    spec = RunSpec.model_validate({"model": {"preset": "tiny", "device": "cpu"}})
    policy = load_policy(spec, with_lora=False)
    design = make_design(split_seeds("heldout", 1)[0], SIZE)
    n = len(design.layers)
    gens = [torch.Generator().manual_seed(SEED)]
    latents, cond = sampler.prepare(policy, design.image, resolution=SIZE, layers=n, generators=gens)
    with torch.no_grad():
        t = torch.tensor(500.0)
        velocity = sampler.predict_velocity(policy, latents, t, cond.image_latents, cond.img_shapes)
    layers = decompose(policy, [design.image], layers=n, steps=STEPS, seed=SEED, resolution=SIZE)[0]
    return {
        "velocity": velocity.float().numpy(),
        "layers": np.stack(layers),
        "prompt_embeds": policy.prompt_embeds.float().numpy(),
    }
