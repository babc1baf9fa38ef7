"""Held-out numbers of a trained tiny pipeline, and its model card (`MODEL_CARD.md`).

The model is loaded the way the product loads it (`model.load_policy` → `from_pretrained`) and
decomposes held-out synthetic designs with `stable_layers.policy.decompose` (deterministic Euler ODE, the
evaluation sampler), at the ground-truth layer count, like `stable-layers eval --data
synthetic:heldout` with its defaults. It is scored with the evaluation code (LayerD protocol,
A.7 metrics: `eval.runner.score_design`) next to:
- `trivial_layer0`: the whole composite in layer 0, the other layers blank;
- `trivial_copy`: the composite copied into every layer;
- `vae_oracle`: the ground-truth layers through the VAE round trip at the working resolution — an
  upper bound on what any transformer can reach with this VAE.
Both trivial stacks recompose the input exactly (recomposition PSNR = the 100 dB cap), so for
recomposition the honest comparison is the VAE oracle; the card says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stable_layers.data import make_design, split_seeds
from stable_layers.layers import as_rgba_array, composite_rgba, on_checkerboard, resize_layer

METHODS = ("tiny", "trivial_layer0", "trivial_copy", "vae_oracle")


@dataclass(frozen=True)
class CardSettings:
    designs: int = 64
    """Held-out designs (`split_seeds("heldout", designs)`), as `eval.heldoutDesigns`."""
    size: int = 256
    """Side of the generated designs, as `eval.heldoutSize`."""
    steps: int = 50
    """Euler steps of `stable_layers.policy.decompose`, as `sampler.evalSteps`."""
    resolution: int = 64
    seed: int = 42
    """Design i uses seed + i for its initial noise (`eval.seed` + index, as the eval runner)."""
    bootstrap: int = 1000


def trivial_layer0(image: np.ndarray, n: int) -> list[np.ndarray]:
    blank = np.zeros_like(image)
    return [image.copy()] + [blank.copy() for _ in range(n - 1)]


def trivial_copy(image: np.ndarray, n: int) -> list[np.ndarray]:
    return [image.copy() for _ in range(n)]


def vae_oracle(policy: Any, gt: list[np.ndarray], resolution: int) -> list[np.ndarray]:
    """GT layers → working size → VAE encode (mode) → decode → input size."""
    import torch

    pipe = policy.pipe
    size = (gt[0].shape[1], gt[0].shape[0])
    small = [resize_layer(g, (resolution, resolution)) for g in gt]
    x = torch.stack([torch.from_numpy(s).permute(2, 0, 1).float() / 127.5 - 1 for s in small]).unsqueeze(2)
    with torch.no_grad():
        z = pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mode()
        rec = pipe.vae.decode(z).sample.squeeze(2).clamp(-1, 1)
    arr = ((rec.permute(0, 2, 3, 1).float().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return [resize_layer(a, size) for a in arr]


def load_base(pipeline_dir: Path) -> tuple[Any, Any]:
    """(policy without LoRA, float32 on CPU; the RunSpec that loaded it, for its eval settings)."""
    from stable_layers.policy import load_policy
    from stable_layers.spec import RunSpec

    spec = RunSpec.model_validate({"model": {"base": str(pipeline_dir), "dtype": "float32", "device": "cpu"}})
    return load_policy(spec, with_lora=False, keep_text_encoder=False), spec


def evaluate_heldout(pipeline_dir: str | Path, settings: CardSettings = CardSettings()) -> dict[str, Any]:
    """Score the pipeline in `pipeline_dir` and the baselines on held-out designs (see module doc)."""
    from stable_layers.eval import paired_bootstrap, score_design
    from stable_layers.policy import decompose

    policy, spec = load_base(Path(pipeline_dir))
    th, max_edits = spec.eval.thresholds, spec.eval.max_edits
    per: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    gallery = []
    t0 = time.perf_counter()
    for i, seed in enumerate(split_seeds("heldout", settings.designs)):
        d = make_design(seed, settings.size)
        image, gt = as_rgba_array(d.image), d.layers
        n = len(gt)
        preds = {
            "tiny": decompose(
                policy, [image], layers=n, steps=settings.steps, seed=settings.seed + i, resolution=settings.resolution
            )[0],
            "trivial_layer0": trivial_layer0(image, n),
            "trivial_copy": trivial_copy(image, n),
            "vae_oracle": vae_oracle(policy, gt, settings.resolution),
        }
        for name, pred in preds.items():
            res = score_design(pred, gt, image, th, max_edits)
            k0 = res.layerd[0] if res.layerd else {"rgb_l1": np.nan, "alpha_iou": np.nan}
            m = res.metrics
            per[name].append(
                {
                    "rgb_l1_k0": k0["rgb_l1"],
                    "alpha_iou_k0": k0["alpha_iou"],
                    "recon_psnr": m["recon_psnr"],
                    "blank_fg": m["blank_fg"],
                    "duplicate_fg": m["duplicate_fg"],
                    "fg_layers": m["fg_layers"],
                }
            )
        if len(gallery) < 6:
            gallery.append((image, gt, preds["tiny"]))
    seconds = time.perf_counter() - t0

    def col(name: str, key: str) -> np.ndarray:
        return np.array([r[key] for r in per[name]], dtype=np.float64)

    summary: dict[str, Any] = {"settings": asdict(settings), "seconds": round(seconds, 1), "methods": {}}
    for name in METHODS:
        fg = col(name, "fg_layers").sum()
        summary["methods"][name] = {
            "rgb_l1_k0": float(np.nanmean(col(name, "rgb_l1_k0"))),
            "alpha_iou_k0": float(np.nanmean(col(name, "alpha_iou_k0"))),
            "recon_psnr": float(np.mean(col(name, "recon_psnr"))),
            "blank_layer_rate": float(col(name, "blank_fg").sum() / fg) if fg else float("nan"),
            "composite_duplicate_rate": float(col(name, "duplicate_fg").sum() / fg) if fg else float("nan"),
        }
    ones = np.ones(settings.designs)
    gaps: dict[str, Any] = {}
    for base in ("trivial_layer0", "trivial_copy"):
        for key in ("rgb_l1_k0", "alpha_iou_k0"):
            b = paired_bootstrap(col(base, key), ones, col("tiny", key), ones, resamples=settings.bootstrap, seed=0)
            gaps[f"{key} tiny-{base}"] = {"diff": b["diff"], "ci": b["ci"]}
    summary["gaps"] = gaps
    summary["gallery"] = gallery
    return summary


def gallery_png(rows: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]], path: Path, cell: int = 96) -> Path:
    """Per row: input | GT layers | predicted layers | recomposition, on checkerboards."""
    from PIL import Image

    def tile(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(on_checkerboard(resize_layer(a, (cell, cell)), 8)), dtype=np.uint8)

    width = max(2 * len(gt) + 2 for _, gt, _ in rows)
    canvas = np.full((len(rows) * (cell + 4), width * (cell + 4), 3), 255, np.uint8)
    for r, (image, gt, pred) in enumerate(rows):
        tiles = [tile(image), *[tile(g) for g in gt], *[tile(p) for p in pred], tile(composite_rgba(pred))]
        for c, t in enumerate(tiles):
            y, x = r * (cell + 4), c * (cell + 4)
            canvas[y : y + cell, x : x + cell] = t
    Image.fromarray(canvas).save(path)
    return path


def write_card(pipeline_dir: str | Path, settings: CardSettings = CardSettings()) -> dict[str, Any]:
    """Evaluate, then write `card.json`, `samples.png` and `MODEL_CARD.md` into `pipeline_dir`."""
    from stable_layers.pretrain.card_text import render_card

    d = Path(pipeline_dir)
    summary = evaluate_heldout(d, settings)
    gallery_png(summary.pop("gallery"), d / "samples.png")
    training = json.loads((d / "training.json").read_text()) if (d / "training.json").is_file() else {}
    (d / "card.json").write_text(json.dumps(summary, indent=2))
    (d / "MODEL_CARD.md").write_text(render_card(training, summary))
    return summary
