"""Panels, the grid, prompts/schemas and answer parsing."""

from __future__ import annotations

import numpy as np
import pytest
from reward_helpers import candidates_by_row, coloured_group

from stable_layers.reward.panels import data_url, render_grid, render_panel, shuffle_order, tile_labels
from stable_layers.reward.prompts import ParseError, parse_stage1, parse_stage2, stage1_schema, stage2_schema
from stable_layers.spec import CRITERIA


def test_panel_layout():
    g = coloured_group(1)
    panel = render_panel(g.image, g.candidates[0].layers, tile=64)
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    assert panel.shape[1] >= 4 * 64  # input, recomposite, 2 layers
    assert tile_labels(3) == ["input", "recomposite", "layer 1 (back)", "layer 2", "layer 3 (front)"]


@pytest.mark.parametrize("n", [8, 16])
def test_grid_is_bounded_and_in_the_given_order(n):
    g = coloured_group(n)
    order = shuffle_order(n, 0, "x", 0)
    grid = render_grid(g.image, [c.layers for c in g.candidates], order, tile=224, max_side=1536)
    assert max(grid.shape[:2]) <= 1536
    if n <= 8:  # one column: rows top to bottom are the shuffled order
        assert candidates_by_row(grid, n) == order
    with pytest.raises(ValueError, match="permutation"):
        render_grid(g.image, [c.layers for c in g.candidates], [0] * n)


def test_grid_tiles_stay_legible_at_640px():
    image = np.zeros((640, 640, 4), np.uint8)
    image[..., 3] = 255
    cands = [[image, image, image, image]] * 8
    grid = render_grid(image, cands, list(range(8)), tile=224, max_side=1536)
    assert max(grid.shape[:2]) <= 1536
    assert grid.shape[0] / 8 >= 150  # each row (label strip + tile) keeps ≥ 150 px


def test_shuffle_is_deterministic_and_varies():
    a = shuffle_order(8, 0, "img", 0)
    assert a == shuffle_order(8, 0, "img", 0) and sorted(a) == list(range(8))
    assert len({tuple(shuffle_order(8, 0, "img", q)) for q in range(6)}) > 1
    assert shuffle_order(8, 0, "img", 0) != shuffle_order(8, 0, "other", 0) or shuffle_order(8, 1, "img", 0) != a


def test_data_url_is_png():
    assert data_url(np.zeros((4, 4, 3), np.uint8)).startswith("data:image/png;base64,iVBOR")


def test_schemas():
    s1 = stage1_schema(10)
    assert set(s1["required"]) == {*CRITERIA, "blank_layer", "duplicate_of_composite"}
    assert s1["properties"]["alpha_cleanliness"] == {"type": "integer", "minimum": 0, "maximum": 10}
    s2 = stage2_schema(8, 10)
    assert s2["required"] == [str(i) for i in range(1, 9)] and s2["additionalProperties"] is False


def test_parsing():
    good = '{"semantic_separation": 3, "alpha_cleanliness": 4, "background_inpainting": 5, "feature_distribution": 6, "content_validity": 7.0, "blank_layer": true, "duplicate_of_composite": false}'
    scores, flags = parse_stage1("```json\n" + good + "\n```", 10)
    assert scores["content_validity"] == 7 and flags == {"blank_layer": True, "duplicate_of_composite": False}
    for bad in [
        "",
        "not json",
        good.replace("3", "11"),
        good.replace("4", "4.5"),
        good.replace('"semantic_separation": 3,', ""),
        good.replace("true", '"yes"'),
    ]:
        with pytest.raises(ParseError):
            parse_stage1(bad, 10)
    assert parse_stage2('{"1": 0, "2": 10, "3": 5}', 3, 10) == [0, 10, 5]
    for bad in ['{"1": 0, "2": 10}', '{"1": 0, "2": 10, "3": 5, "4": 1}', '{"1": true, "2": 1, "3": 1}', "[1, 2, 3]"]:
        with pytest.raises(ParseError):
            parse_stage2(bad, 3, 10)
