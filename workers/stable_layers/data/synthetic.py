"""Seeded Crello-like layered designs with known ground-truth layers.

A design is an opaque background (flat colour, linear gradient or texture) and 1–5 elements on top
of it, back to front: flat shapes (rectangles, rounded rectangles, ellipses, triangles), photo-like
patches (smooth coloured noise), short words rendered with PIL's bundled font, some of them
semi-transparent, placed so that they often occlude one another. Each layer is a full-canvas RGBA
uint8 array (straight colour, transparent outside its element), and the design's `image` is their
alpha-over composite, so the layers recompose to the input exactly (`stable_layers.layers`).

Splits are by seed, in disjoint ranges (`split_seeds`): training uses `TRAIN_SEED_START + i`, the
held-out evaluation set `HELDOUT_SEED_START + i`. Everything is deterministic in the seed: the same
seed gives the same design, byte for byte, on any machine with the same Pillow/numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from stable_layers.layers import composite_rgba

Split = Literal["train", "heldout"]

TRAIN_SEED_START = 0
HELDOUT_SEED_START = 1_000_000_000
"""Held-out seeds start here; training seeds are `[0, HELDOUT_SEED_START)`. The ranges are far
apart so that no realistic training run (`data.num_images` designs) can reach a held-out seed."""

MIN_SIZE, MAX_SIZE = 32, 1024
ELEMENT_KINDS = ("rect", "rounded", "ellipse", "triangle", "photo", "text")
BACKGROUND_KINDS = ("flat", "gradient", "texture")
WORDS = ("SALE", "NEW", "HELLO", "50%", "JOIN", "OPEN", "WOW", "SHOP", "FUN", "GO", "TOP", "YES")
SUPERSAMPLE = 4
"""Shapes are drawn at 4× and box-filtered down, so their edges carry fractional alpha like
anti-aliased vector art in real designs."""


@dataclass(frozen=True)
class SyntheticDesign:
    """One generated design: `image` is the opaque H×W×4 uint8 composite of `layers`."""

    id: str
    image: np.ndarray
    layers: list[np.ndarray] = field(repr=False)
    kinds: tuple[str, ...] = ()
    """What each layer is: the background kind, then one of `ELEMENT_KINDS` per element."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def split_seeds(split: Split, n: int, start: int = 0) -> list[int]:
    """The seeds of designs `start .. start+n-1` of a split (`train` or `heldout`); disjoint by
    construction. `make_design(seed)` of each gives the split's designs."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 0 or start < 0:
        raise ValueError(f"n ({n}) and start ({start}) must be non-negative")
    base = TRAIN_SEED_START if split == "train" else HELDOUT_SEED_START
    if split == "train" and start + n > HELDOUT_SEED_START:
        raise ValueError(f"train seeds stop at {HELDOUT_SEED_START}; asked for {start}+{n}")
    return [base + start + i for i in range(n)]


def split_of(seed: int) -> Split:
    """Which split a seed belongs to."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return "heldout" if seed >= HELDOUT_SEED_START else "train"


def design_id(seed: int) -> str:
    split = split_of(seed)
    index = seed - (HELDOUT_SEED_START if split == "heldout" else TRAIN_SEED_START)
    return f"synthetic-{split}-{index:06d}"


def make_design(seed: int, size: int = 128, *, min_elements: int = 1, max_elements: int = 5) -> SyntheticDesign:
    """Generate the design of `seed` on a `size`×`size` canvas (background + 1–5 elements).

    The element count is uniform in `[min_elements, max_elements]`. Raises ValueError for a size
    outside [32, 1024] or an empty/negative element range.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}] px, got {size}")
    if not 0 <= min_elements <= max_elements:
        raise ValueError(f"need 0 <= min_elements <= max_elements, got {min_elements}..{max_elements}")
    rng = np.random.default_rng([seed, size])
    bg_kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    layers = [_background(rng, size, bg_kind)]
    kinds = [bg_kind]
    n = int(rng.integers(min_elements, max_elements + 1))
    boxes: list[tuple[int, int, int, int]] = []
    bg_colour = layers[0][..., :3].reshape(-1, 3).mean(axis=0)
    for _ in range(n):
        kind = ELEMENT_KINDS[rng.integers(len(ELEMENT_KINDS))]
        box = _place(rng, size, boxes, kind)
        layer = _element(rng, size, kind, box, bg_colour)
        if rng.random() < 0.25:  # semi-transparent element (overlays, watermarks, tinted boxes)
            alpha = layer[..., 3].astype(np.float32) * rng.uniform(0.45, 0.85)
            layer[..., 3] = np.round(alpha).astype(np.uint8)
        layer[layer[..., 3] == 0, :3] = 0  # canonical colour under fully transparent pixels
        layers.append(layer)
        kinds.append(kind)
        boxes.append(box)
    image = composite_rgba(layers)
    return SyntheticDesign(id=design_id(seed), image=image, layers=layers, kinds=tuple(kinds))


# --- colours -----------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A random saturated-ish colour, at least some distance from `avoid` so elements stay
    visible against the background."""
    for _ in range(8):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        if avoid is None or np.abs(c - avoid).sum() > 150:
            return c
    return 255.0 - np.asarray(avoid, dtype=np.float32)


# --- backgrounds -------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    if kind == "flat":
        rgb = np.broadcast_to(_colour(rng), (size, size, 3))
    elif kind == "gradient":
        a, b = _colour(rng), _colour(rng)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        rgb = a * (1 - t[..., None]) + b * t[..., None]
    else:  # texture: soft stripes or checks over a base colour, plus fine grain
        base, other = _colour(rng), _colour(rng)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        period = rng.uniform(0.1, 0.3) * size
        if rng.random() < 0.5:
            angle = rng.uniform(0, np.pi)
            w = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        else:
            w = 0.5 + 0.25 * (np.sin(2 * np.pi * xx / period) + np.sin(2 * np.pi * yy / period))
        w = w * rng.uniform(0.2, 0.6)
        rgb = base * (1 - w[..., None]) + other * w[..., None] + rng.normal(0, 4, (size, size, 1))
    alpha = np.full((size, size, 1), 255.0)
    return np.clip(np.round(np.concatenate([rgb, alpha], axis=-1)), 0, 255).astype(np.uint8)


# --- elements ----------------------------------------------------------------------------------


def _place(
    rng: np.random.Generator, size: int, boxes: list[tuple[int, int, int, int]], kind: str
) -> tuple[int, int, int, int]:
    """A bounding box (x0, y0, x1, y1) inside the canvas. Often centred near a previous element so
    that designs contain occlusions; text is wider than tall."""
    lo, hi = 0.2, 0.6
    w = int(size * rng.uniform(lo, hi))
    h = int(size * rng.uniform(lo, hi))
    if kind == "text":
        w, h = int(size * rng.uniform(0.45, 0.8)), int(size * rng.uniform(0.18, 0.3))
    w, h = max(w, 6), max(h, 6)
    if boxes and rng.random() < 0.5:
        px0, py0, px1, py1 = boxes[rng.integers(len(boxes))]
        cx = (px0 + px1) / 2 + rng.uniform(-0.5, 0.5) * (px1 - px0)
        cy = (py0 + py1) / 2 + rng.uniform(-0.5, 0.5) * (py1 - py0)
        x0, y0 = int(cx - w / 2), int(cy - h / 2)
    else:
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    x0, y0 = int(np.clip(x0, 0, size - w)), int(np.clip(y0, 0, size - h))
    return x0, y0, x0 + w, y0 + h


def _shape_mask(rng: np.random.Generator, size: int, kind: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Anti-aliased coverage mask (float32 H×W in [0,1]) of a vector shape."""
    s = SUPERSAMPLE
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = (v * s for v in box)
    xy = (x0, y0, x1 - 1, y1 - 1)
    if kind == "rect":
        draw.rectangle(xy, fill=255)
    elif kind == "rounded":
        radius = int(min(x1 - x0, y1 - y0) * rng.uniform(0.15, 0.45))
        draw.rounded_rectangle(xy, radius=radius, fill=255)
    elif kind == "ellipse":
        draw.ellipse(xy, fill=255)
    else:  # triangle with a random apex along the top edge
        apex = x0 + rng.uniform(0.1, 0.9) * (x1 - x0)
        pts = [(apex, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
        if rng.random() < 0.5:  # upside down
            pts = [(apex, y1 - 1), (x1 - 1, y0), (x0, y0)]
        draw.polygon(pts, fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _photo(rng: np.random.Generator, size: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like patch: smooth multi-scale colour noise in a rectangle (rgb H×W×3, mask)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rgb = np.zeros((h, w, 3), dtype=np.float32)
    for cells, weight in ((2, 0.6), (5, 0.3), (12, 0.1)):
        coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        up = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        rgb += weight * np.asarray(up, dtype=np.float32)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[y0:y1, x0:x1] = rgb
    mask = np.zeros((size, size), dtype=np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return canvas, mask


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: available offline, identical on every machine with the same Pillow.
    return ImageFont.load_default(size=px)


def _text_mask(rng: np.random.Generator, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A short word, bold-ish, scaled to fill its box; anti-aliased coverage mask."""
    x0, y0, x1, y1 = box
    word = WORDS[rng.integers(len(WORDS))]
    s = SUPERSAMPLE
    font = _font(max(6, (y1 - y0) * s))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), word, font=font, stroke_width=s)
    tw, th = max(right - left, 1), max(bottom - top, 1)
    scale = min((x1 - x0) * s / tw, (y1 - y0) * s / th)
    font = _font(max(6, int((y1 - y0) * s * min(scale, 1.0))))
    left, top, right, bottom = probe.textbbox((0, 0), word, font=font, stroke_width=s)
    big = Image.new("L", (size * s, size * s), 0)
    ox = x0 * s + ((x1 - x0) * s - (right - left)) // 2 - left
    oy = y0 * s + ((y1 - y0) * s - (bottom - top)) // 2 - top
    ImageDraw.Draw(big).text((ox, oy), word, fill=255, font=font, stroke_width=s, stroke_fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _element(
    rng: np.random.Generator, size: int, kind: str, box: tuple[int, int, int, int], bg_colour: np.ndarray
) -> np.ndarray:
    if kind == "photo":
        rgb, mask = _photo(rng, size, box)
    else:
        mask = _text_mask(rng, size, box) if kind == "text" else _shape_mask(rng, size, kind, box)
        colour = _colour(rng, avoid=bg_colour)
        rgb = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
        if kind != "text" and rng.random() < 0.3:  # soft drop shadow baked into the element
            shadow = Image.fromarray(np.round(mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 64))
            blurred = np.asarray(shadow, dtype=np.float32) / 255.0
            d = max(1, size // 48)
            shifted = np.zeros_like(blurred)
            shifted[d:, d:] = blurred[:-d, :-d]  # offset down-right, no wrap-around
            sh = np.clip(shifted * 0.5, 0, 1) * (1 - mask)
            total = mask + sh
            rgb = np.where(total[..., None] > 0, rgb * (mask / np.maximum(total, 1e-6))[..., None], 0.0)
            mask = total
    rgba = np.concatenate([rgb, mask[..., None] * 255.0], axis=-1)
    return np.clip(np.round(rgba), 0, 255).astype(np.uint8)
