"""Crello (`cyberagent/crello`, v5 schema) → (composite, ordered RGBA ground-truth layers).

Follows LayerD's dataset tool (shared/docs/eval.md A.1) with a small PIL renderer instead of
cr-renderer (not on PyPI, git unreachable):

- canvas scaled so its short side is `short_side` (LayerD's tool: 512), upscaling allowed;
- each element drawn onto its own transparent full-canvas layer: its pre-rendered `image` stretched
  into its `width × height` box, rotated by `angle` degrees (clockwise, y down, as CSS/skia) about
  the box centre, translated to (`left`, `top`), alpha multiplied by `opacity`; resampling is done
  on premultiplied colour so transparent pixels do not bleed dark fringes;
- elements whose `image` has no fully opaque pixel are dropped (LayerD's `exclude_transparent`);
  a non-background element that covers the canvas hides (drops) every element below it;
- a white opaque background layer is prepended when the bottom occlusion group does not cover the
  whole canvas; designs left with fewer than 2 layers are skipped, with the reason counted.

**Text path**: text elements are drawn from their pre-rendered `image` (no font re-typesetting),
so numbers differ slightly from LayerD/QIL, which re-typeset text with cr-renderer's fonts.
`TEXT_PATH` names this in every report.

The composite is the alpha-over of the kept layers on white, so the GT recomposes to the input.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stable_layers.layers import as_rgba_array, composite, composite_rgba, occlusion_groups, to_uint8

log = logging.getLogger(__name__)

HUB_ID = "cyberagent/crello"
TEXT_PATH = "prerendered"
"""How text elements are drawn: from the dataset's pre-rendered element image (not re-typeset)."""


class CrelloError(ValueError):
    """Crello data that cannot be loaded (missing path, wrong split, not the v5 schema)."""


@dataclass(frozen=True)
class CrelloDesign:
    id: str
    image: np.ndarray = field(repr=False)  # H×W×3 uint8, composite on white (the model input)
    layers: list[np.ndarray] = field(repr=False)  # back to front, H×W×4 uint8
    elements: list[int] = field(default_factory=list)  # source element index per layer; -1 = added white bg


@dataclass
class CrelloStats:
    rows: int = 0
    rendered: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    text_path: str = TEXT_PATH

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rendered": self.rendered, "skipped": dict(self.skipped), "textPath": self.text_path}


# ------------------------------------------------------------------------------------ loading


def _pick_split_files(files: list[Path], split: str) -> list[Path]:
    """HF shard layouts name the split in the file (`test-00000-of-00001.parquet`) or folder."""
    chosen = [f for f in files if f.name.startswith(f"{split}-") or split in f.parent.parts[-1:]]
    return chosen or files


def load_rows(source: str, *, split: str = "test", revision: str = "5.1.0") -> Any:
    """Rows of Crello as a `datasets` (Iterable)Dataset with the v5 features.

    `source`: a `save_to_disk` folder (Dataset or DatasetDict), a Parquet file, a folder of Parquet
    shards (the split's shards are picked by name when several splits are present), or `hub` /
    `hf://cyberagent/crello` to stream from the Hugging Face hub (needs network; not exercised in
    our tests). Parquet keeps the ClassLabel names in its schema metadata, so the same code path
    serves the real shards and the synthetic test shards.
    """
    import datasets

    if source in ("hub", f"hf://{HUB_ID}", HUB_ID):
        return datasets.load_dataset(HUB_ID, revision=revision, split=split, streaming=True)
    path = Path(source).expanduser()
    if not path.exists():
        raise CrelloError(f"crello:{source}: path does not exist; pass a save_to_disk folder or Parquet shards")
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(path))
        if split not in dd:
            raise CrelloError(f"crello:{source}: no split {split!r}; available: {list(dd)} (eval.crello.split)")
        return dd[split]
    if path.is_dir() and (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise CrelloError(f"crello:{source}: no .parquet files and not a datasets save_to_disk folder")
    files = _pick_split_files(files, split)
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)


def _names(features: Any, column: str) -> Any:
    """The ClassLabel of a column or of its sequence items, or None."""
    import datasets

    feat = features.get(column) if features is not None else None
    for _ in range(2):
        if isinstance(feat, datasets.ClassLabel):
            return feat
        feat = getattr(feat, "feature", None)
    return None


# ---------------------------------------------------------------------------------- rendering


def _element_layer(
    img: Image.Image, box: tuple[float, float, float, float], angle: float, opacity: float, size: tuple[int, int]
) -> np.ndarray:
    """One element on a transparent canvas of `size` (W, H); `box` = (left, top, width, height) in
    output pixels."""
    left, top, w, h = box
    bw, bh = max(1, round(w)), max(1, round(h))
    # Resize first with an antialiasing filter (downscales happen), then place with an affine map
    # that is a pure rotation + translation (+ the sub-pixel stretch from rounding).
    src = img.convert("RGBa").resize((bw, bh), Image.Resampling.LANCZOS)
    sx, sy = bw / w if w > 0 else 1.0, bh / h if h > 0 else 1.0
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    cx, cy = left + w / 2, top + h / 2
    # Output → source: undo translation to the centre, rotate by −angle, shift to box corner, scale.
    a, b = c * sx, s * sx
    d, e = -s * sy, c * sy
    off_x = -(a * cx + b * cy) + w / 2 * sx
    off_y = -(d * cx + e * cy) + h / 2 * sy
    out = src.transform(size, Image.Transform.AFFINE, (a, b, off_x, d, e, off_y), resample=Image.Resampling.BILINEAR)
    layer = as_rgba_array(out.convert("RGBA"))
    if opacity < 1.0:
        layer[..., 3] = np.round(layer[..., 3].astype(np.float32) * max(opacity, 0.0)).astype(np.uint8)
    layer[layer[..., 3] == 0, :3] = 0
    return layer


def _value(row: dict[str, Any], key: str, k: int, default: float) -> float:
    seq = row.get(key)
    if seq is None or k >= len(seq) or seq[k] is None:
        return default
    return float(seq[k])


def _canvas(row: dict[str, Any], features: Any, key: str) -> int:
    v = row[key]
    label = _names(features, key)
    return int(label.int2str(v)) if label is not None else int(v)  # ClassLabel in v3/v4


def render_design(row: dict[str, Any], features: Any = None, short_side: int = 512) -> CrelloDesign | str:
    """Render one Crello row; returns the design, or the reason it is skipped (a short string)."""
    images = row.get("image") or []
    if not images:
        return "no elements"
    cw, ch = _canvas(row, features, "canvas_width"), _canvas(row, features, "canvas_height")
    if cw <= 0 or ch <= 0:
        return "invalid canvas size"
    scale = short_side / min(cw, ch)
    size = (int(cw * scale), int(ch * scale))
    kept: list[tuple[int, np.ndarray]] = []
    for k, img in enumerate(images):
        if img is None:
            continue
        pil = img if isinstance(img, Image.Image) else Image.fromarray(as_rgba_array(np.asarray(img)))
        pil = pil.convert("RGBA")
        if np.asarray(pil.getchannel("A")).max() < 255:
            continue  # LayerD supports only opaque layers: no fully opaque pixel → dropped
        box = tuple(_value(row, key, k, 0.0) * scale for key in ("left", "top", "width", "height"))
        layer = _element_layer(pil, box, _value(row, "angle", k, 0.0), _value(row, "opacity", k, 1.0), size)
        kept.append((k, layer))
    covering = [i for i, (_, lay) in enumerate(kept) if i > 0 and bool((lay[..., 3] == 255).all())]
    if covering:
        kept = kept[covering[-1] :]  # everything below a canvas-covering element is hidden
    if len(kept) < 2:
        return "fewer than 2 opaque elements"
    layers = [lay for _, lay in kept]
    elements = [k for k, _ in kept]
    bottom = occlusion_groups([lay[..., 3] for lay in layers])[0]
    if not bool((composite_rgba([layers[i] for i in bottom])[..., 3] == 255).all()):
        white = np.full((size[1], size[0], 4), 255, np.uint8)
        layers, elements = [white, *layers], [-1, *elements]
    image = to_uint8(composite(layers, background=1.0))
    return CrelloDesign(str(row.get("id", "")), image, layers, elements)


def iter_designs(
    source: str,
    *,
    split: str = "test",
    revision: str = "5.1.0",
    short_side: int = 512,
    limit: int | None = None,
    stats: CrelloStats | None = None,
) -> Iterator[CrelloDesign]:
    """Rendered designs in dataset order, skipping (and counting, by reason) unusable rows."""
    stats = stats if stats is not None else CrelloStats()
    rows = load_rows(source, split=split, revision=revision)
    features = getattr(rows, "features", None)
    missing = {"image", "canvas_width", "canvas_height", "left", "top", "width", "height"} - set(features or {})
    if features is not None and missing:
        raise CrelloError(f"crello:{source}: not the Crello v5 schema, missing columns {sorted(missing)}")
    for row in rows:
        if limit is not None and stats.rendered >= limit:
            return
        stats.rows += 1
        try:
            result = render_design(row, features, short_side)
        except Exception as err:  # one broken row must not end an evaluation
            log.warning("crello %s: render failed: %s", row.get("id"), err)
            stats.skipped[f"render error: {type(err).__name__}"] += 1
            continue
        if isinstance(result, str):
            stats.skipped[result] += 1
            continue
        stats.rendered += 1
        yield result
