"""The LayerD protocol on hand-built stacks whose scores are derived by hand (eval.md A.2–A.6)."""

from __future__ import annotations

import numpy as np
import pytest

from stable_layers.eval.layerd import (
    aggregate_levels,
    dtw_path,
    evaluate_pair,
    over,
    pair_metrics,
)
from stable_layers.layers import occlusion_groups

RED, BLUE, BLACK = (255, 0, 0), (0, 0, 255), (0, 0, 0)


def row_layer(cols: list[int], rgb: tuple[int, int, int], width: int = 4, alpha: int = 255) -> np.ndarray:
    """A 1×width layer, opaque `rgb` at `cols`, transparent (0,0,0,0) elsewhere."""
    lay = np.zeros((1, width, 4), np.uint8)
    for c in cols:
        lay[0, c] = (*rgb, alpha)
    return lay


BG = row_layer([0, 1, 2, 3], BLACK)
A = row_layer([0, 1], RED)
B = row_layer([1, 2], BLUE)  # overlaps A at column 1
M = over(A, B)  # B over A: red, blue, blue, transparent


def test_pair_metrics_by_hand():
    # M vs A: mask = A's cols {0,1}; col 1 is blue vs red → mean over channels 2/3 → L1 = 1/3.
    l1, iou = pair_metrics(M, A)
    assert l1 == pytest.approx(1 / 3)
    assert iou == pytest.approx(2 / 3)  # Σmin = 2, Σmax = 3
    # bg vs A: black vs red is 1/3 on both masked pixels; IoU 2/4.
    assert pair_metrics(BG, A) == pytest.approx((1 / 3, 1 / 2))
    # Empty GT layer: L1 ≈ 0 (eps-guarded), IoU = Σmin/Σmax = 0.
    assert pair_metrics(A, np.zeros_like(A)) == pytest.approx((0.0, 0.0))
    # Two empty layers: IoU is defined as 0 when the union is empty.
    assert pair_metrics(np.zeros_like(A), np.zeros_like(A)) == (0.0, 0.0)


def test_pair_metrics_mask_comes_from_second_argument():
    # Colour under the *prediction's* zero alpha still counts where the GT has alpha.
    pred = row_layer([0], RED, alpha=0)
    pred[0, 0, :3] = RED
    gt = row_layer([0], BLUE)
    l1, iou = pair_metrics(pred, gt)
    assert l1 == pytest.approx(1 / 4 * 4 * (2 / 3))  # one masked pixel, |red−blue| mean = 2/3
    assert iou == 0.0
    assert pair_metrics(gt, pred)[0] == pytest.approx(0.0)  # pred's mask is empty → 0


def test_identical_stacks_score_perfectly_with_no_edits():
    rng = np.random.default_rng(0)
    stack = [np.concatenate([rng.integers(0, 256, (16, 16, 3)), np.full((16, 16, 1), 255)], -1).astype(np.uint8)]
    for y in (2, 6):
        lay = np.zeros((16, 16, 4), np.uint8)
        lay[y : y + 6, 3:12] = (*rng.integers(0, 256, 3), 255)
        stack.append(lay)
    records = evaluate_pair(stack, [s.copy() for s in stack])
    assert len(records) == 1
    assert records[0]["rgb_l1"] == 0.0 and records[0]["alpha_iou"] == 1.0 and records[0]["cost"] == 0.0
    assert records[0]["n_pred"] == records[0]["n_gt"] == 3


def test_extra_blank_layer_is_absorbed_and_not_penalised():
    gt = [BG, A, B]
    records = evaluate_pair([BG, A, B, np.zeros_like(A)], gt)
    assert records[0]["n_pred"] == 3  # the blank layer joined the top group
    assert records[0]["cost"] == 0.0 and records[0]["alpha_iou"] == 1.0


def test_occlusion_groups_merge_non_overlapping_siblings():
    left, right = row_layer([0], RED), row_layer([3], BLUE)
    assert occlusion_groups([BG[..., 3], left[..., 3], right[..., 3]]) == [[0], [1, 2]]
    assert occlusion_groups([BG[..., 3], A[..., 3], B[..., 3]]) == [[0], [1], [2]]
    # Low alpha still counts as overlap (any α > 0).
    faint = row_layer([1], RED, alpha=1)
    assert occlusion_groups([A[..., 3], faint[..., 3]]) == [[0], [1]]


def test_two_gt_layers_merged_in_the_prediction():
    """pred = [bg, B over A]; gt = [bg, A, B]. Derived by hand in the comments."""
    records = evaluate_pair([BG, M], [BG, A, B])
    # Costs: C = [[0, 5/12, 5/12], [1/4, 1/3, 1/6]] → DTW path (0,0), (1,1), (1,2).
    lvl0 = records[0]
    assert lvl0["cost"] == pytest.approx((0 + 1 / 3 + 1 / 6) / 3)
    assert lvl0["rgb_l1"] == pytest.approx((0 + 1 / 3 + 0) / 3)
    assert lvl0["alpha_iou"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # Level 1: the prediction has 2 groups (not editable); GT pair (1,2) gains 2 − 13/9 = 5/9 over
    # pair (0,1)'s 1/36 → GT becomes [bg, B over A] = the prediction exactly.
    assert len(records) == 2
    assert records[1]["merged"] == "gt"
    assert records[1]["cost"] == pytest.approx(0.0) and records[1]["alpha_iou"] == pytest.approx(1.0)
    assert records[1]["n_gt"] == 2


def test_over_segmented_prediction_is_merged_on_the_prediction_side():
    records = evaluate_pair([BG, A, B], [BG, M])
    assert records[0]["cost"] > 0
    assert [r["merged"] for r in records] == [None, "pred"]
    assert records[-1]["cost"] == pytest.approx(0.0)
    assert records[-1]["n_pred"] == 2


def test_half_transparent_layer():
    """Same colour and region at alpha 128 instead of 255: L1 0, IoU 128/255 on that pair."""
    gt = [BG, A]
    half = A.copy()
    half[..., 3] = np.where(A[..., 3] > 0, 128, 0)
    records = evaluate_pair([BG, half], gt)
    assert len(records) == 1  # two groups each: nothing may be merged
    assert records[0]["rgb_l1"] == pytest.approx(0.0)
    assert records[0]["alpha_iou"] == pytest.approx((1 + 128 / 255) / 2)
    assert records[0]["cost"] == pytest.approx((0 + (1 - 128 / 255) / 2) / 2)


def test_dtw_tie_breaking_prefers_diagonal_then_up_then_left():
    assert dtw_path(np.zeros((2, 2))) == [(0, 0), (1, 1)]
    # From (1,2): up (0,2) and left (1,1) tie at 0 (diagonal (0,1) is worse): (i−1, j) wins.
    c = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # acc = [[0,1,1],[0,0,0]]; at (1,2): diag (0,1)=1, up (0,2)=1, left (1,1)=0 → left.
    assert dtw_path(c) == [(0, 0), (1, 1), (1, 2)]
    c2 = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    # acc = [[0,0],[0,5],[0,0]]: at (2,1) diag (1,0)=0, up (1,1)=5, left (2,0)=0 → diagonal on tie.
    assert dtw_path(c2) == [(0, 0), (1, 0), (2, 1)]
    # Borders walk along the border; the path covers every row and column.
    path = dtw_path(np.ones((1, 3)))
    assert path == [(0, 0), (0, 1), (0, 2)]


def test_max_edits_caps_levels_and_aggregation_carries_last_level():
    r1 = evaluate_pair([BG, M], [BG, A, B], max_edits=0)
    assert len(r1) == 1
    short = [{"rgb_l1": 0.2, "alpha_iou": 0.5, "cost": 0.35}]
    long = [{"rgb_l1": 0.4, "alpha_iou": 0.1, "cost": 0.65}, {"rgb_l1": 0.0, "alpha_iou": 0.9, "cost": 0.05}]
    agg = aggregate_levels([short, long], max_edits=2)
    assert [a["k"] for a in agg] == [0, 1, 2]
    assert agg[0]["rgb_l1"] == pytest.approx(0.3)
    assert agg[1]["rgb_l1"] == pytest.approx(0.1)  # (0.2 carried) + 0.0
    assert agg[2]["alpha_iou"] == pytest.approx(0.7)
    assert [a["avg_edits"] for a in agg] == [0.0, 0.5, 0.5]
    assert [a["reached"] for a in agg] == [2, 1, 0]
    assert aggregate_levels([]) == []


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="resize predictions"):
        evaluate_pair([np.zeros((4, 4, 4), np.uint8)] * 2, [np.zeros((5, 4, 4), np.uint8)] * 2)
    with pytest.raises(ValueError, match="uint8 RGBA"):
        evaluate_pair([np.zeros((4, 4, 3), np.uint8)] * 2, [np.zeros((4, 4, 4), np.uint8)] * 2)
    with pytest.raises(ValueError, match="empty"):
        evaluate_pair([], [BG])
