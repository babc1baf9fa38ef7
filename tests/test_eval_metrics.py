"""A.7 layer-quality metrics and the paired bootstrap, on hand-built stacks with values by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stable_layers.eval.metrics import (
    aggregate,
    artifact_heavy,
    design_metrics,
    evenness,
    is_blank,
    overlap_stats,
    per_layer_l1,
    psnr,
    ssim,
)
from stable_layers.eval.stats import paired_bootstrap
from stable_layers.layers import composite, to_uint8
from stable_layers.spec import EvalThresholds

TH = EvalThresholds()
S = 64


def opaque(rgb: tuple[int, int, int]) -> np.ndarray:
    lay = np.zeros((S, S, 4), np.uint8)
    lay[...] = (*rgb, 255)
    return lay


def box(y0: int, y1: int, x0: int, x1: int, rgb=(200, 30, 30), alpha: int = 255) -> np.ndarray:
    lay = np.zeros((S, S, 4), np.uint8)
    lay[y0:y1, x0:x1] = (*rgb, alpha)
    return lay


def flatten(layers: list[np.ndarray]) -> np.ndarray:
    return to_uint8(composite(layers, background=1.0))


GT = [opaque((40, 90, 160)), box(5, 25, 5, 25), box(30, 60, 20, 50, rgb=(20, 180, 60))]
IMAGE = flatten(GT)


def test_perfect_prediction():
    rec = design_metrics(GT, IMAGE, TH, gt=GT)
    assert rec["blank_fg"] == 0 and rec["duplicate_fg"] == 0 and not rec["degenerate_bg"]
    assert rec["artifact_layers"] == 0 and rec["nonblank_layers"] == 3
    assert rec["recon_l1"] == pytest.approx(0.0, abs=1e-6)
    assert rec["recon_psnr"] > 60 and rec["recon_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert rec["separation_mean"] == 0.0  # disjoint foreground boxes
    assert [x["l1"] for x in rec["per_layer"]] == [0.0, 0.0, 0.0]
    assert rec["effective_layers"] == rec["gt_groups"] == 2 and rec["effective_error"] == 0
    # equal boxes: 400 vs 900 px of alpha mass → entropy of (4/13, 9/13) / ln 2
    p = np.array([400, 900]) / 1300
    assert rec["evenness"] == pytest.approx(float(-(p * np.log(p)).sum() / math.log(2)))


def test_extra_blank_layers_are_counted():
    faint = opaque((0, 0, 0))
    faint[..., 3] = 10  # max alpha 10/255 < 0.05
    speck = box(0, 1, 0, 1)  # one pixel: coverage 1/4096 < 0.001
    assert is_blank(faint[..., 3] / 255.0, TH) and is_blank(speck[..., 3] / 255.0, TH)
    rec = design_metrics([*GT, faint, speck], IMAGE, TH, gt=GT)
    assert rec["fg_layers"] == 4 and rec["blank_fg"] == 2
    agg = aggregate([rec, design_metrics(GT, IMAGE, TH, gt=GT)])
    assert agg["blank_layer_rate"] == pytest.approx(2 / 6)  # Σ blank / Σ foreground layers
    assert agg["samples_with_blank"] == pytest.approx(0.5)


def test_copy_of_the_composite_is_a_duplicate_and_not_blank():
    copy = IMAGE.copy()
    copy = np.concatenate([copy, np.full((S, S, 1), 255, np.uint8)], axis=-1)
    rec = design_metrics([GT[0], copy, GT[1]], IMAGE, TH, gt=GT)
    assert rec["duplicate_fg"] == 1 and rec["blank_fg"] == 0


def test_degenerate_background():
    # background covering half the canvas: κ0 = 0.5 < 0.95
    half = box(0, 32, 0, 64, rgb=(40, 90, 160))
    assert design_metrics([half, GT[1], GT[2]], IMAGE, TH)["degenerate_bg"]
    # background = the input (nothing inpainted) while a foreground layer is non-blank
    copy_bg = np.concatenate([IMAGE, np.full((S, S, 1), 255, np.uint8)], axis=-1)
    assert design_metrics([copy_bg, GT[1]], IMAGE, TH)["degenerate_bg"]
    # an inpainted background under a small element is not a copy, though it is close overall
    small = box(30, 33, 30, 33)
    image_small = flatten([GT[0], small])
    assert not design_metrics([GT[0], small], image_small, TH)["degenerate_bg"]
    # ... nor when every foreground layer is blank (a one-layer image is legitimately all bg)
    assert not design_metrics([copy_bg, np.zeros((S, S, 4), np.uint8)], IMAGE, TH)["degenerate_bg"]


def test_artifact_heavy_haze_and_speckle():
    haze = np.zeros((S, S), np.float32)
    haze[8:56, 8:56] = 0.4  # semi-transparent everywhere, no α = 0.5 contour to excuse it
    heavy, share, _ = artifact_heavy(haze, TH)
    assert heavy and share == pytest.approx(1.0)
    clean = box(10, 50, 10, 50)[..., 3] / 255.0
    clean[9, 10:50] = 0.5  # a 1-px anti-aliased edge sits inside the contour band
    assert artifact_heavy(clean.astype(np.float32), TH)[0] is False
    dots = np.zeros((S, S), np.float32)
    for i in range(21):
        dots[(i // 7) * 4 + 2, (i % 7) * 4 + 2] = 1.0  # 21 isolated pixels > 20 speckles
    heavy, _, count = artifact_heavy(dots, TH)
    assert heavy and count == 21
    dots[2, 2] = 0.0  # 20 speckles: not more than 20
    assert artifact_heavy(dots, TH)[0] is False


def test_separation_overlap_coefficient():
    a = box(0, 10, 0, 10)[..., 3] / 255.0
    b = box(5, 15, 0, 10)[..., 3] / 255.0  # 50 of 100 px shared
    c = box(40, 50, 40, 50)[..., 3] / 255.0
    mean, mx = overlap_stats([a, b, c])
    assert mx == pytest.approx(0.5)
    assert mean == pytest.approx(0.5 / 3)
    assert math.isnan(overlap_stats([a])[0])


def test_evenness_values():
    a = box(0, 10, 0, 10)[..., 3] / 255.0
    z = np.zeros_like(a)
    assert evenness([a, a]) == pytest.approx(1.0)
    assert evenness([a, z]) == pytest.approx(0.0)
    assert evenness([a, a, z]) == pytest.approx(math.log(2) / math.log(3))
    assert evenness([z, z]) == 0.0


def test_recomposition_against_grey():
    white = np.full((S, S, 3), 255, np.uint8)
    grey = opaque((128, 128, 128))
    rec = design_metrics([grey, np.zeros((S, S, 4), np.uint8)], white, TH)
    assert rec["recon_l1"] == pytest.approx(127 / 255, abs=1e-6)
    assert rec["recon_psnr"] == pytest.approx(10 * math.log10(1 / (127 / 255) ** 2), abs=1e-4)
    assert psnr(np.zeros((2, 2, 3)), np.zeros((2, 2, 3))) == 100.0
    x = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, 1 - x) < 0


def test_per_layer_l1_premultiplied_and_masked():
    shifted = [GT[0].copy(), GT[1].copy()]
    shifted[0][..., 0] = shifted[0][..., 0] + 51  # one channel off by 51/255 = 0.2 on an opaque layer
    rows = per_layer_l1(shifted, GT)
    assert len(rows) == 2
    assert rows[0]["l1"] == pytest.approx(0.2 / 4, abs=1e-6)  # mean over RGBA, 1 of 4 channels
    assert rows[0]["l1_masked"] == pytest.approx(0.2 / 3, abs=1e-6)  # LayerD: mean over RGB
    assert rows[1]["l1"] == 0.0


def test_aggregate_groups_per_layer_l1_by_layer_count():
    recs = [design_metrics(GT, IMAGE, TH, gt=GT), design_metrics(GT[:2], IMAGE, TH, gt=GT[:2])]
    recs[1]["per_layer"][0]["l1"] = 0.3
    by_l = aggregate(recs)["per_layer_by_L"]
    assert set(by_l) == {"2", "3"}
    assert by_l["2"]["l1"] == [0.3, 0.0] and by_l["2"]["designs"] == 1
    assert by_l["3"]["mean_l1"] == 0.0


def test_paired_bootstrap():
    base = np.array([0.1, 0.2, 0.3, 0.4])
    ones = np.ones(4)
    same = paired_bootstrap(base, ones, base, ones, resamples=200)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]
    shifted = paired_bootstrap(base, ones, base + 0.1, ones, resamples=200)
    assert shifted["diff"] == pytest.approx(0.1)
    assert shifted["ci"] == pytest.approx([0.1, 0.1])
    # ratio of sums: blank counts [1, 0] of [2, 2] foreground layers → 1/4; fine-tuned 0
    r = paired_bootstrap(np.array([1.0, 0.0]), np.array([2.0, 2.0]), np.zeros(2), np.array([2.0, 2.0]), resamples=500)
    assert r["base"] == 0.25 and r["finetuned"] == 0.0 and r["diff"] == -0.25
    assert r["ci"][0] == pytest.approx(-0.5) and r["ci"][1] == pytest.approx(0.0)
    noisy = paired_bootstrap(base, ones, base + np.array([0.3, -0.1, 0.2, 0.0]), ones, resamples=1000, seed=1)
    assert noisy["ci"][0] < noisy["diff"] < noisy["ci"][1]
    assert paired_bootstrap(base[:1], ones[:1], base[:1], ones[:1])["ci"] is None
    with pytest.raises(ValueError, match="one entry per design"):
        paired_bootstrap(base, ones, base[:2], ones[:2])
