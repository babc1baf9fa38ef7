"""No free lunch in the pixel rubric: separating nothing must not pay.

Before the fix, a stack with the whole composite in layer 0 and every other layer blank scored
0.85 of 1 (separation and inpainting were a vacuous 1.0 when nothing was separated): above every
stack that kept one of the paper's named failures, and close to the exact decomposition.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from stable_layers.data import make_design
from stable_layers.layers import composite_rgba
from stable_layers.reward import build_scorer, judge_check
from stable_layers.reward.ladder import SEPARATION_LEVELS, make_ladder, named_failures, partial
from stable_layers.reward.pixel import PixelScorer, pixel_measures
from stable_layers.spec import RewardSpec

SCORER = PixelScorer()


def _reward(image: np.ndarray, layers: list[np.ndarray]) -> float:
    return SCORER.score_candidate(image, layers).reward


def _trivial(image: np.ndarray, n: int) -> list[np.ndarray]:
    flat = image.copy()
    flat[..., 3] = 255
    return [flat, *(np.zeros_like(image) for _ in range(n - 1))]


def _designs():
    """Designs wider than the ladder's: 1–5 elements, 64–192 px, some stacks padded with blank
    slots (a model with more slots than elements)."""
    for seed in range(12):
        for size in (64, 192):
            d = make_design(seed, size, min_elements=1, max_elements=5)
            layers = list(d.layers)
            if seed % 3 == 0:
                layers.append(np.zeros_like(layers[0]))
            yield f"{seed}-{size}", d.image, layers


def _separating_stacks(layers: list[np.ndarray], image: np.ndarray):
    """Every stack that separates at least one element correctly: the truth, the partials (top k
    elements separated, the rest flat in layer 0), the composite duplicated into a slot of any of
    them, and the truth with an empty layer 0. (A partial with an empty layer 0 has thrown most of
    the image away; it may score below the trivial stack and is not listed.)"""
    n_el = sum(1 for lay in layers[1:] if lay[..., 3].any())
    stacks = [("truth", layers)]
    true = [lay for lay in layers if lay[..., 3].any()]
    for k in range(1, n_el):
        p = partial(true, k)
        stacks.append((f"partial_{k}", p + [np.zeros_like(p[0])] * (len(layers) - len(p))))
    if len(true) >= 2:
        for i, (name, _good, bad) in enumerate(named_failures(true, image)):
            if name == "duplicated_composite" or i < 2:  # pairs 0, 1: the truth's
                stacks.append((f"{name}:{i}", bad))
        merged = [true[0], composite_rgba(true[1:])] if len(true) > 2 else None
        if merged is not None:  # all elements in one foreground layer: separated from the background only
            stacks.append(("merged_foreground", merged + [np.zeros_like(true[0])] * (len(layers) - 2)))
    return stacks


@pytest.mark.parametrize("case", list(_designs()), ids=lambda c: c[0])
def test_trivial_stack_scores_below_every_stack_that_separates(case):
    _, image, layers = case
    trivial = _reward(image, _trivial(image, len(layers)))
    for name, stack in _separating_stacks(layers, image):
        visible = pixel_measures(image, stack).separated_area
        if visible < 0.002:
            continue  # an element hidden behind others: nothing visible was separated
        assert _reward(image, stack) > trivial, name


def test_separation_and_inpainting_score_only_what_was_separated():
    d = make_design(5, 96, min_elements=3, max_elements=3)
    trivial = pixel_measures(d.image, _trivial(d.image, 4))
    assert trivial.nothing_separated and trivial.separated_area == 0.0
    assert trivial.criteria["semantic_separation"] == 0.0
    assert trivial.criteria["background_inpainting"] == 0.0
    assert trivial.criteria["content_validity"] == pytest.approx(1.0, abs=1e-3)  # it recomposes exactly
    truth = pixel_measures(d.image, list(d.layers))
    assert not truth.nothing_separated and truth.separated_area > 0.05
    s = SCORER.score_candidate(d.image, _trivial(d.image, 4))
    assert s.flags["nothing_separated"] and s.raw["penalties"]["nothing_separated"] == 0.5
    # a copy of the composite in a foreground slot is not separation either
    cif = [np.zeros_like(d.image), _trivial(d.image, 1)[0], np.zeros_like(d.image)]
    m = pixel_measures(d.image, cif)
    assert m.nothing_separated and m.duplicate_layers == [1]
    # one layer was never asked to separate
    assert not pixel_measures(d.image, _trivial(d.image, 1)).nothing_separated


def test_nothing_separated_penalty_is_configurable():
    d = make_design(5, 64, min_elements=3, max_elements=3)
    spec = RewardSpec()
    spec.penalties.nothing_separated = 0.0
    s = PixelScorer(spec).score_candidate(d.image, _trivial(d.image, 4))
    assert "nothing_separated" not in s.raw["penalties"]
    assert s.reward == pytest.approx(_reward(d.image, _trivial(d.image, 4)) + 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_named_failures_score_below_the_same_stack_without_them(seed):
    d = make_design(seed, 96, min_elements=3, max_elements=3)
    pairs = named_failures(list(d.layers), d.image)
    assert {name for name, _, _ in pairs} == {"duplicated_composite", "degenerate_layer0"}
    for name, good, bad in pairs:
        assert _reward(d.image, bad) < _reward(d.image, good), name


def test_separation_ladder_order_and_spearman():
    """Issue acceptance: Spearman ≥ 0.95 on the ladders (defects and separation)."""
    report = asyncio.run(judge_check(build_scorer(RewardSpec()), groups=6, size=96, repeats=1))
    for stage in ("reward", "judge"):
        assert report["spearman"][stage]["mean"] >= 0.95, stage
    per = [report["per_level"]["separation"][lv]["reward"] for lv in SEPARATION_LEVELS]
    assert per == sorted(per, reverse=True)
    _, image, rungs = make_ladder(0, 96, "separation")
    assert len(rungs) == len(SEPARATION_LEVELS)
    for a, b in itertools.pairwise(rungs):
        assert _reward(image, a) > _reward(image, b)
