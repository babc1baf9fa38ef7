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

A second chain, the *separation ladder*, asks whether a scorer rewards separating at all. From the
same design (L = 4 slots), best first:

  0 ground_truth              the true layers
  1 partial_2                 the top two elements separated, the bottom one left flat in layer 0
  2 partial_1                 the top element separated, the rest flat in layer 0
  3 nothing_separated         the whole composite in layer 0, every other layer blank
  4 composite_in_foreground   layer 0 empty, the composite copied into the first foreground slot

Partial stacks recompose exactly, like the trivial one: only separation tells them apart.
`named_failures` pairs a stack with the same stack plus one of the paper's named failures (the
composite duplicated into a foreground slot, a degenerate layer 0) for every rung above rung 3.

`judge-check` shuffles the candidates of each group before scoring, so a judge gains nothing from
their position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from stable_layers.layers import composite_rgba

DEFECTS = (
    "alpha_noise",
    "colour_bleed",
    "background_not_inpainted",
    "swapped_order",
    "blank_layer",
    "duplicated_composite",
)
LEVELS = ("ground_truth", *DEFECTS)
SEPARATION_LEVELS = ("ground_truth", "partial_2", "partial_1", "nothing_separated", "composite_in_foreground")
LADDERS = {"defects": LEVELS, "separation": SEPARATION_LEVELS}
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
    return [*layers[:3], _opaque_copy(image), *layers[4:]]


DEFECT_FUNCS: dict[str, Callable[[Stack, np.ndarray, np.random.Generator], Stack]] = {
    "alpha_noise": alpha_noise,
    "colour_bleed": colour_bleed,
    "background_not_inpainted": background_not_inpainted,
    "swapped_order": swapped_order,
    "blank_layer": blank_layer,
    "duplicated_composite": duplicated_composite,
}


def _opaque_copy(image: np.ndarray) -> np.ndarray:
    dup = image.copy()
    dup[..., 3] = 255
    return dup


def partial(layers: Stack, separated: int) -> Stack:
    """The top `separated` elements in their own layers, everything below flattened into layer 0,
    the freed slots blank (at the top, where a model that stops early leaves them)."""
    n = len(layers)
    flat = composite_rgba(layers[: n - separated])
    blanks = [np.zeros_like(layers[0]) for _ in range(n - 1 - separated)]
    return [flat, *layers[n - separated :], *blanks]


def _separable(layers: Stack) -> bool:
    """Every element mostly visible, and no two overlapping elements of the same colour.

    A hidden element, or two same-coloured overlapping ones, make flattening them as good as
    separating them from the pixels alone: such a design cannot say which rung is better.
    """
    alpha = np.stack([lay[..., 3] for lay in layers]).astype(np.float32) / 255.0
    rgb = np.stack([lay[..., :3] for lay in layers]).astype(np.float32) / 255.0
    above = np.ones_like(alpha)
    for i in range(len(layers) - 2, -1, -1):
        above[i] = above[i + 1] * (1.0 - alpha[i + 1])
    for i in range(1, len(layers)):
        present = alpha[i] >= 0.25
        if (alpha[i] * above[i] >= 0.25).sum() < 0.5 * present.sum():
            return False
        for j in range(i + 1, len(layers)):
            both = present & (alpha[j] >= 0.25)
            if both.any() and (np.abs(rgb[i] - rgb[j]).max(axis=-1)[both] < 0.06).mean() > 0.05:
                return False
    return True


def separable_design(seed: int, size: int = 128) -> Any:
    """The first design of `seed`'s candidates (seed, then derived seeds) that `_separable` accepts."""
    from stable_layers.data import make_design

    for k in range(64):
        design = make_design(seed + 1_000_003 * k, size, min_elements=N_ELEMENTS, max_elements=N_ELEMENTS)
        if _separable(list(design.layers)):
            return design
    raise RuntimeError(f"no separable design found for seed {seed} at size {size}")


def separation_rungs(layers: Stack, image: np.ndarray) -> list[Stack]:
    """The separation ladder of one design (`SEPARATION_LEVELS` order, best first)."""
    n = len(layers)
    blank = np.zeros_like(layers[0])
    rungs = [list(layers), *(partial(layers, k) for k in range(n - 2, 0, -1))]
    rungs.append([_opaque_copy(image), *([blank] * (n - 1))])
    rungs.append([blank, _opaque_copy(image), *([blank] * (n - 2))])
    return rungs


def named_failures(layers: Stack, image: np.ndarray) -> list[tuple[str, Stack, Stack]]:
    """(failure name, stack, the same stack with the failure) for the ground truth and partials.

    The duplicate goes into a blank slot where there is one (nothing else changes), else it
    replaces the top layer; a degenerate layer 0 is an empty one.
    """
    out = []
    for base in separation_rungs(layers, image)[:-2]:
        free = [i for i in range(1, len(base)) if not base[i][..., 3].any()]
        slot = free[0] if free else len(base) - 1
        dup = list(base)
        dup[slot] = _opaque_copy(image)
        out.append(("duplicated_composite", base, dup))
        out.append(("degenerate_layer0", base, [np.zeros_like(base[0]), *base[1:]]))
    return out


def make_ladder(
    seed: int, size: int = 128, kind: Literal["defects", "separation"] = "defects"
) -> tuple[str, np.ndarray, list[Stack]]:
    """(design id, input image, the candidates of ladder `kind` in order: best first)."""
    from stable_layers.data import make_design

    if kind == "separation":
        design = separable_design(seed, size)
        return design.id, design.image, separation_rungs(list(design.layers), design.image)
    if kind != "defects":
        raise ValueError(f"unknown ladder {kind!r}; allowed: {', '.join(LADDERS)}")
    design = make_design(seed, size, min_elements=N_ELEMENTS, max_elements=N_ELEMENTS)
    image = design.image
    rng = np.random.default_rng([seed, size, 7])
    rungs = [list(design.layers)]
    for name in DEFECTS:
        rungs.append(DEFECT_FUNCS[name](rungs[-1], image, rng))
    return design.id, image, rungs
