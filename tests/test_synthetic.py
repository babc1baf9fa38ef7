"""Synthetic layered designs: exact recomposition, determinism, disjoint splits, variety."""

from __future__ import annotations

import numpy as np
import pytest

from stable_layers.data.synthetic import (
    ELEMENT_KINDS,
    HELDOUT_SEED_START,
    design_id,
    make_design,
    split_of,
    split_seeds,
)
from stable_layers.layers import composite, to_uint8


@pytest.mark.parametrize("size", [64, 96, 128])
def test_layers_composite_exactly_to_image(size: int) -> None:
    for seed in range(20):
        d = make_design(seed, size)
        assert d.image.shape == (size, size, 4) and d.image.dtype == np.uint8
        assert (d.image[..., 3] == 255).all(), "the composite is opaque"
        for lay in d.layers:
            assert lay.shape == (size, size, 4) and lay.dtype == np.uint8
        recomposed = to_uint8(composite(d.layers, background=0.0))
        np.testing.assert_array_equal(recomposed, d.image[..., :3])
        # the background is opaque, so any backdrop gives the same picture
        np.testing.assert_array_equal(to_uint8(composite(d.layers, background=1.0)), d.image[..., :3])


def test_layer_structure() -> None:
    counts = set()
    kinds = set()
    for seed in range(60):
        d = make_design(seed, 64)
        assert (d.layers[0][..., 3] == 255).all(), "layer 0 is an opaque background"
        assert 2 <= d.num_layers <= 6 and len(d.kinds) == d.num_layers
        for lay in d.layers[1:]:
            a = lay[..., 3]
            assert (a > 0).any(), "every element is visible somewhere"
            assert (a == 0).any(), "elements do not cover the whole canvas"
            assert (lay[a == 0, :3] == 0).all(), "canonical colour under transparent pixels"
        counts.add(d.num_layers)
        kinds.update(d.kinds[1:])
    assert counts == {2, 3, 4, 5, 6}
    assert kinds == set(ELEMENT_KINDS)
    semi = [make_design(s, 64) for s in range(60)]
    assert any(((lay[..., 3] > 20) & (lay[..., 3] < 230)).mean() > 0.05 for d in semi for lay in d.layers[1:]), (
        "some elements are semi-transparent"
    )


def test_element_range_is_respected() -> None:
    for seed in range(20):
        assert make_design(seed, 64, min_elements=2, max_elements=2).num_layers == 3
        assert make_design(seed, 64, min_elements=0, max_elements=0).num_layers == 1


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    a, b = make_design(7, 96), make_design(7, 96)
    assert a.id == b.id
    np.testing.assert_array_equal(a.image, b.image)
    for x, y in zip(a.layers, b.layers, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(make_design(8, 96).image, a.image)


def test_splits_are_disjoint_and_labelled() -> None:
    train = split_seeds("train", 500)
    held = split_seeds("heldout", 500)
    assert not set(train) & set(held)
    assert train[:3] == [0, 1, 2] and held[0] == HELDOUT_SEED_START
    assert split_seeds("heldout", 3, start=10) == [HELDOUT_SEED_START + 10 + i for i in range(3)]
    assert {split_of(s) for s in train} == {"train"} and {split_of(s) for s in held} == {"heldout"}
    assert design_id(held[4]) == "synthetic-heldout-000004"
    assert make_design(train[4], 64).id == "synthetic-train-000004"
    # the images themselves differ across splits (no accidental aliasing of the RNG streams)
    assert not np.array_equal(make_design(train[0], 64).image, make_design(held[0], 64).image)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"size": 16}, "size"), ({"min_elements": 3, "max_elements": 2}, "min_elements")],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_design(0, **kwargs)
    with pytest.raises(ValueError, match="split"):
        split_seeds("test", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train seeds"):
        split_seeds("train", 10, start=HELDOUT_SEED_START - 5)
