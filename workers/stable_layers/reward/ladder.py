"""The synthetic "defect ladder": groups of decompositions whose quality order is known.

From one ground-truth design (background + 3 elements, `data.synthetic.make_design`) the ladder
builds 7 candidates; candidate k carries the first k defects of `DEFECTS`, applied cumulatively,
so each rung is strictly worse than the one before:

  0 ground_truth              the true layers
  1 alpha_noise               speckles of low alpha in transparent areas, holes punched into elements
  2 colour_bleed              a coloured haze (alpha fading from 0.35) bleeding ~r px around elements
  3 background_not_inpainted  the objects are left in the background (copied from the input)
  4 swapped_order             background and the first element swap places (it ends up hidden)
  5 blank_layer               the second element's layer is empty
  6 duplicated_composite      the third element's layer is replaced by the whole input

`judge-check` shuffles the candidates of each group before scoring, so a judge gains nothing from
their position.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFECTS = (
    "alpha_noise",
    "colour_bleed",
    "background_not_inpainted",
    "swapped_order",
    "blank_layer",
    "duplicated_composite",
)
LEVELS = ("ground_truth", *DEFECTS)
N_ELEMENTS = 3

Stack = list[np.ndarray]


def _element_colour(layer: np.ndarray) -> np.ndarray:
    a = layer[..., 3] >= 128
    return layer[a, :3].mean(axis=0) if a.any() else np.array([128.0, 128.0, 128.0])


def alpha_noise(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    out = [layers[0]]
    for lay in layers[1:]:
        lay = lay.copy()
        a = lay[..., 3].astype(np.float32)
        speck = (a == 0) & (rng.random(a.shape) < 0.04)
        lay[speck, :3] = np.round(_element_colour(layers[1])).astype(np.uint8)
        a[speck] = rng.uniform(25, 100, int(speck.sum()))
        holes = (a > 0) & (rng.random(a.shape) < 0.08)
        a[holes] *= rng.uniform(0.3, 0.8, int(holes.sum()))
        lay[..., 3] = np.round(a).astype(np.uint8)
        out.append(lay)
    return out


def colour_bleed(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    from scipy.ndimage import distance_transform_edt

    radius = max(3.0, layers[0].shape[0] / 24)
    out = [layers[0]]
    for lay in layers[1:]:
        lay = lay.copy()
        a = lay[..., 3].astype(np.float32) / 255.0
        solid = a >= 0.5
        if not solid.any():
            out.append(lay)
            continue
        dist = distance_transform_edt(~solid)
        haze = 0.35 * np.clip(1.0 - dist / radius, 0.0, 1.0) * (dist > 0)
        grow = haze > a
        lay[grow, :3] = np.round(_element_colour(lay)).astype(np.uint8)
        lay[..., 3] = np.round(np.maximum(a, haze) * 255.0).astype(np.uint8)
        out.append(lay)
    return out


def background_not_inpainted(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    fg = np.stack([lay[..., 3] for lay in layers[1:]]).astype(np.float32) / 255.0
    under = 1.0 - np.prod(1.0 - fg, axis=0) >= 0.5
    bg = layers[0].copy()
    bg[under, :3] = image[under, :3]
    bg[under, 3] = 255
    return [bg, *layers[1:]]


def swapped_order(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    return [layers[1], layers[0], *layers[2:]]


def blank_layer(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    return [*layers[:2], np.zeros_like(layers[2]), *layers[3:]]


def duplicated_composite(layers: Stack, image: np.ndarray, rng: np.random.Generator) -> Stack:
    dup = image.copy()
    dup[..., 3] = 255
    return [*layers[:3], dup, *layers[4:]]


DEFECT_FUNCS: dict[str, Callable[[Stack, np.ndarray, np.random.Generator], Stack]] = {
    "alpha_noise": alpha_noise,
    "colour_bleed": colour_bleed,
    "background_not_inpainted": background_not_inpainted,
    "swapped_order": swapped_order,
    "blank_layer": blank_layer,
    "duplicated_composite": duplicated_composite,
}


def make_ladder(seed: int, size: int = 128) -> tuple[str, np.ndarray, list[Stack]]:
    """(design id, input image, the 7 candidates in ladder order: best first)."""
    from stable_layers.data import make_design

    design = make_design(seed, size, min_elements=N_ELEMENTS, max_elements=N_ELEMENTS)
    image = design.image
    rng = np.random.default_rng([seed, size, 7])
    rungs = [list(design.layers)]
    for name in DEFECTS:
        rungs.append(DEFECT_FUNCS[name](rungs[-1], image, rng))
    return design.id, image, rungs
