"""RGBA layer stacks as numpy arrays: conversion, compositing and folder I/O.

Shared by the reward, the evaluation and the data code so that every part of the system composites
the same way. Conventions (shared/docs/eval.md): a layer is an H×W×4 uint8 array (straight, not
premultiplied, colour); stacks are ordered back to front (index 0 = background); compositing is
Porter–Duff "over".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Layer = np.ndarray  # H×W×4 uint8


def to_float(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGBA → (rgb float32 in [0,1] of shape H×W×3, alpha float32 in [0,1] of shape H×W)."""
    f = np.asarray(layer, dtype=np.float32) / 255.0
    return f[..., :3], f[..., 3]


def stack_float(layers: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A stack of N uint8 RGBA layers → (rgb N×H×W×3, alpha N×H×W) float32 in [0,1]."""
    f = np.stack([np.asarray(lay) for lay in layers]).astype(np.float32) / 255.0
    return f[..., :3], f[..., 3]


def composite(layers: Sequence[np.ndarray], background: float | Sequence[float] | None = 1.0) -> np.ndarray:
    """Alpha-over composite, back to front, onto a solid background; float32 H×W×3 in [0,1].

    `background=1.0` is white (Crello renders on white), 0.0 black (Qwen-Image-Layered's C_0).
    `None` returns premultiplied RGBA (H×W×4) over a transparent canvas instead.
    """
    rgb, alpha = stack_float(layers)
    out_rgb = np.zeros(rgb.shape[1:], dtype=np.float32)
    out_a = np.zeros(alpha.shape[1:], dtype=np.float32)
    for c, a in zip(rgb, alpha, strict=True):
        a3 = a[..., None]
        out_rgb = c * a3 + out_rgb * (1.0 - a3)  # premultiplied accumulation
        out_a = a + out_a * (1.0 - a)
    if background is None:
        return np.concatenate([out_rgb, out_a[..., None]], axis=-1)
    bg = np.broadcast_to(np.asarray(background, dtype=np.float32), (3,))
    return out_rgb + (1.0 - out_a[..., None]) * bg


def composite_rgba(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Flatten layers (back to front, "over") into one straight-colour uint8 RGBA layer."""
    pre = composite(layers, background=None)
    a = pre[..., 3:4]
    rgb = np.where(a > 0, pre[..., :3] / np.maximum(a, 1e-12), 0.0)
    return np.clip(np.round(np.concatenate([rgb, a], axis=-1) * 255.0), 0, 255).astype(np.uint8)


def checkerboard(height: int, width: int, cell: int = 8, light: int = 230, dark: int = 180) -> np.ndarray:
    """Grey checkerboard H×W×3 uint8, the usual backdrop that makes transparency visible."""
    yy, xx = np.mgrid[0:height, 0:width]
    board = ((yy // cell + xx // cell) % 2).astype(np.uint8)
    grey = np.where(board == 0, light, dark).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def on_checkerboard(layer: np.ndarray, cell: int = 8) -> np.ndarray:
    """A layer composited over a checkerboard, H×W×3 uint8 (for panels and galleries)."""
    h, w = layer.shape[:2]
    bg = checkerboard(h, w, cell).astype(np.float32) / 255.0
    rgb, a = to_float(layer)
    out = rgb * a[..., None] + bg * (1.0 - a[..., None])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def alpha_overlaps(alphas: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n×n bool: layers i and j share a pixel with alpha > 0, n: pixels with alpha > 0 per layer)."""
    masks = np.stack([np.asarray(a).reshape(-1) > 0 for a in alphas]).astype(np.float32)
    return (masks @ masks.T) > 0.5, masks.sum(axis=1)


def occlusion_groups(alphas: Sequence[np.ndarray]) -> list[list[int]]:
    """Occlusion groups of a stack (LayerD, docs/eval.md A.3), back to front, each a list of layer indices in order.

    Repeatedly take every remaining layer that no later remaining layer overlaps (hard masks α > 0),
    top first; non-overlapping siblings and blank layers end up in one group.
    """
    overlaps, _ = alpha_overlaps(alphas)
    remaining = list(range(len(alphas)))
    groups: list[list[int]] = []
    while remaining:
        group = [i for pos, i in enumerate(remaining) if not any(overlaps[i, j] for j in remaining[pos + 1 :])]
        groups.append(group)
        remaining = [i for i in remaining if i not in group]
    return groups[::-1]


def canonical_order(layers: Sequence[np.ndarray]) -> list[int]:
    """A reordering of a back-to-front RGBA stack that composites to the same image: layers that
    overlap (alpha > 0 on a common pixel) keep their relative order; among the layers free to go
    next, the one with the largest visible area goes first (ties: the lower original index).

    The order of layers that do not overlap is invisible in the composite, so a generator that
    draws it at random asks a model to guess it. Training on this order removes that guess
    (LayerD's evaluation groups non-overlapping layers anyway, so it scores the same either way).
    """
    overlaps, area = alpha_overlaps([np.asarray(layer)[..., 3] for layer in layers])
    n = len(layers)
    placed: list[int] = []
    remaining = list(range(n))
    while remaining:
        # free: no remaining layer below it overlaps it
        free = [j for j in remaining if not any(overlaps[i, j] for i in remaining if i < j)]
        pick = max(free, key=lambda j: (area[j], -j))
        placed.append(pick)
        remaining.remove(pick)
    return placed


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float image in [0,1] → uint8."""
    return np.clip(np.round(np.asarray(rgb, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def as_rgba_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image or array (H×W, H×W×3, H×W×4) → H×W×4 uint8 RGBA (opaque if it had no alpha)."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 3:
        a = np.concatenate([a, np.full((*a.shape[:2], 1), 255, np.uint8)], axis=-1)
    return a


def resize_layer(layer: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGBA layer to (width, height) on premultiplied colour, then un-premultiply,
    so colour under transparent pixels does not bleed into edges (eval.md A.1 [proposal])."""
    w, h = size
    if layer.shape[1] == w and layer.shape[0] == h:
        return layer
    rgb, a = to_float(layer)
    pre = np.concatenate([rgb * a[..., None], a[..., None]], axis=-1)
    chans = [
        np.asarray(Image.fromarray(pre[..., i]).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        for i in range(4)
    ]
    pre_r = np.stack(chans, axis=-1)
    ar = np.clip(pre_r[..., 3:4], 0.0, 1.0)
    rgb_r = np.where(ar > 1e-6, pre_r[..., :3] / np.maximum(ar, 1e-6), 0.0)
    return to_uint8(np.concatenate([np.clip(rgb_r, 0, 1), ar], axis=-1))


def _atomic_save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_layers(directory: str | Path, layers: Sequence[np.ndarray], prefix: str = "layer-") -> list[Path]:
    """Write `layer-00.png`, `layer-01.png`, … (back to front, lexicographic = stacking order)."""
    d = Path(directory)
    paths = []
    for i, lay in enumerate(layers):
        p = d / f"{prefix}{i:02d}.png"
        _atomic_save_png(Image.fromarray(as_rgba_array(lay), "RGBA"), p)
        paths.append(p)
    return paths


def load_layers(directory: str | Path, pattern: str = "layer-*.png") -> list[np.ndarray]:
    """Read a folder of RGBA PNG layers in lexicographic (= back-to-front) order."""
    d = Path(directory)
    files = sorted(d.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{d}: no files matching {pattern!r}; expected layer PNGs named back to front")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(as_rgba_array(im))
        except OSError as err:
            raise OSError(f"{f}: not a readable image ({err})") from None
    return out


def save_image(path: str | Path, img: np.ndarray) -> Path:
    """Atomically write an RGB or RGBA uint8 array as PNG."""
    a = np.asarray(img)
    mode = "RGBA" if a.ndim == 3 and a.shape[-1] == 4 else "RGB"
    p = Path(path)
    _atomic_save_png(Image.fromarray(a if a.dtype == np.uint8 else to_uint8(a), mode), p)
    return p
