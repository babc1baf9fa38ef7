"""Crello v5 → (composite, GT layers) on a synthetic Parquet shard with the real feature types."""

from __future__ import annotations

from pathlib import Path

import crello_fixture as cf
import numpy as np
import pytest

from stable_layers.data.crello import CrelloError, CrelloStats, iter_designs, load_rows
from stable_layers.eval.layerd import evaluate_pair
from stable_layers.layers import composite, to_uint8


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crello")
    cf.write_parquet(root, "test")
    cf.write_parquet(root, "validation")  # the loader must pick the requested split's shard
    return root


@pytest.fixture(scope="module")
def rendered(shard: Path) -> tuple[dict, CrelloStats]:
    stats = CrelloStats()
    designs = {d.id: d for d in iter_designs(str(shard), split="test", short_side=100, stats=stats)}
    return designs, stats


def test_parquet_round_trip_keeps_classlabels_and_images(shard: Path):
    import datasets

    rows = load_rows(str(shard), split="test")
    assert rows.features["type"].feature.names == cf.TYPES
    assert isinstance(rows.features["image"].feature, datasets.Image)
    first = next(iter(rows))
    assert first["id"] == "full" and first["image"][0].mode == "RGBA"
    assert rows.features["type"].feature.int2str(first["type"][2]) == "ImageElement"


def test_skips_are_counted_with_reasons(rendered):
    designs, stats = rendered
    assert set(designs) == {"full", "nobg", "covered"}
    assert stats.rows == 5 and stats.rendered == 3
    assert stats.skipped == {"fewer than 2 opaque elements": 2}
    assert stats.as_dict()["textPath"] == "prerendered"


def test_gt_layers_recompose_to_the_composite(rendered):
    designs, _ = rendered
    for d in designs.values():
        assert d.image.dtype == np.uint8 and d.image.shape[-1] == 3
        assert all(lay.shape[:2] == d.image.shape[:2] for lay in d.layers)
        recomposed = to_uint8(composite(d.layers, background=1.0))
        assert np.abs(recomposed.astype(int) - d.image.astype(int)).max() <= 1
        # ... and the GT scores perfectly against itself under the LayerD protocol
        assert evaluate_pair(d.layers, d.layers)[0]["cost"] == 0.0


def test_layerd_filtering_rules(rendered):
    designs, _ = rendered
    full = designs["full"]
    # element 4 (never fully opaque) is dropped; text (5) is kept; no white layer since element 0 covers
    assert full.elements == [0, 1, 2, 3, 5]
    assert len(full.layers) == cf.expected_layers()["full"]
    assert designs["nobg"].elements == [-1, 0, 1]  # white background prepended
    assert (designs["nobg"].layers[0] == 255).all()
    assert designs["covered"].elements == [2, 3]  # element 2 covers the canvas, hides 0 and 1


def test_geometry_scale_translate_rotate_opacity(rendered):
    designs, _ = rendered
    full = designs["full"]
    assert full.image.shape == (100, 200, 3)  # 200×100 canvas, short side 100 → scale 1
    rect = full.layers[1][..., 3]  # box (10, 20, 40, 30): x 10..49, y 20..49
    ys, xs = np.nonzero(rect)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 49, 10, 49)
    assert (full.layers[1][25, 30, :3] == (250, 200, 0)).all()
    bar = full.layers[3][..., 3]  # 80×16 box centred at (100, 68), rotated 90° → 16 wide, 80 tall
    ys, xs = np.nonzero(bar > 128)
    assert abs((xs.max() - xs.min() + 1) - 16) <= 1 and ys.min() in (27, 28, 29) and ys.max() == 99
    text = full.layers[4][..., 3]  # opacity 0.5 on an opaque glyph pixel → alpha 128
    assert text.max() == 128
    disc = full.layers[2]
    assert disc[35, 145, 3] == 255 and disc[11, 121, 3] == 0  # inside the disc; outside its corner


def test_short_side_scaling(shard: Path):
    d = next(iter_designs(str(shard), split="test", short_side=50, limit=1))
    assert d.image.shape == (50, 100, 3)
    ys, xs = np.nonzero(d.layers[1][..., 3] > 128)
    assert (ys.min(), xs.min()) == (10, 5)  # (top 20, left 10) × 0.5


def test_bad_sources(tmp_path: Path):
    with pytest.raises(CrelloError, match="does not exist"):
        list(iter_designs(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrelloError, match=r"no \.parquet"):
        list(iter_designs(str(tmp_path / "empty")))
