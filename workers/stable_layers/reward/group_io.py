"""Group folders on disk and the `scores.json` document of `stable-layers score`.

A group folder holds `input.png` and one sub-folder per candidate, `cand-*/layer-*.png`, layers
named back to front (`layers.save_layers` writes this layout).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stable_layers.layers import as_rgba_array, load_layers, save_image, save_layers
from stable_layers.reward.base import Candidate, Group, GroupScore
from stable_layers.reward.combine import spread


def load_group(directory: str | Path) -> tuple[Group, list[str]]:
    """(Group, candidate folder names) from a group folder; clear errors name the file to fix."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: group folder not found; expected input.png and cand-*/layer-*.png")
    inp = d / "input.png"
    if not inp.is_file():
        raise FileNotFoundError(f"{inp}: missing; a group folder needs the input image as input.png")
    try:
        with Image.open(inp) as im:
            image = as_rgba_array(im)
    except OSError as err:
        raise OSError(f"{inp}: not a readable image ({err})") from None
    cand_dirs = sorted(p for p in d.glob("cand-*") if p.is_dir())
    if not cand_dirs:
        raise FileNotFoundError(f"{d}: no cand-* folders; put each candidate's layers in cand-N/layer-NN.png")
    candidates = [Candidate(load_layers(c)) for c in cand_dirs]
    return Group(d.name, image, candidates), [c.name for c in cand_dirs]


def save_group(directory: str | Path, image: np.ndarray, candidates: Sequence[Sequence[np.ndarray]]) -> Path:
    """Write a group folder (input.png, cand-00/, cand-01/, …)."""
    d = Path(directory)
    save_image(d / "input.png", as_rgba_array(image))
    for i, layers in enumerate(candidates):
        save_layers(d / f"cand-{i:02d}", list(layers))
    return d


def scores_document(score: GroupScore, names: Sequence[str], scorer: str) -> dict[str, Any]:
    """The JSON of `stable-layers score`: per candidate criteria/stages/reward, per group spread."""
    cands = []
    for name, s in zip(names, score.scores, strict=True):
        cands.append(
            {
                "name": name,
                "reward": s.reward,
                "criteria": s.criteria,
                "stage1": s.stages.get("1"),
                "stage2": s.stages.get("2"),
                "judge": s.stages.get("judge"),
                "flags": s.flags,
                "penalties": s.raw.get("penalties", {}),
                "raw": s.raw,
            }
        )
    spreads: dict[str, dict[str, float]] = {}
    for stage, key in (("stage1", "1"), ("stage2", "2"), ("judge", "judge")):
        vals = [s.stages[key] for s in score.scores if key in s.stages]
        if vals:
            std, rng = spread(vals)
            spreads[stage] = {"std": std, "range": rng}
    std, rng = spread(score.rewards)
    spreads["reward"] = {"std": std, "range": rng}
    return {
        "image_id": score.image_id,
        "scorer": scorer,
        "candidates": cands,
        "spread": spreads,
        "stats": score.stats,
        "latencies": score.latencies,
    }


def write_json_atomic(path: str | Path, doc: Any) -> Path:
    """Write JSON via a temp file and rename, so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=_jsonable)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
