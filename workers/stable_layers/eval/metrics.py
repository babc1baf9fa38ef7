"""Layer-quality metrics for the Stable-Layers claims (shared/docs/eval.md A.7), per design.

The paper publishes no definitions for these, so they follow eval.md's proposals; every threshold is
a field of `EvalThresholds` (`RunSpec.eval.thresholds`). All metrics run on the *raw* predicted
layers (no occlusion grouping), except the effective layer count, which counts occlusion groups.

`design_metrics` returns one flat, JSON-able record per design; `aggregate` turns a list of them
into dataset numbers (rates are ratios of sums over designs, so designs with more layers weigh more,
exactly as "blank foreground layers / all foreground layers" reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from stable_layers.eval.layerd import pair_metrics
from stable_layers.layers import composite, occlusion_groups
from stable_layers.spec import EvalThresholds


def input_on_white(image: np.ndarray) -> np.ndarray:
    """The model input as float RGB on white (an RGBA input is composited over white first)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:
        return composite([a], background=1.0)
    return a[..., :3].astype(np.float32) / 255.0


PSNR_CAP = 100.0
"""PSNR of identical images is infinite; capping keeps dataset means finite and JSON-able."""


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of two float images in [0,1], capped at `PSNR_CAP`."""
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def ssim(x: np.ndarray, y: np.ndarray, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window σ=1.5, K1=0.01, K2=0.03, range 1), averaged
    over channels, for float images in [0,1] of shape H×W×C."""
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch].astype(np.float64), y[..., ch].astype(np.float64)

        def blur(v: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(v, sigma, truncate=3.5)

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        vals.append(float(s.mean()))
    return float(np.mean(vals))


def is_blank(alpha: np.ndarray, th: EvalThresholds) -> bool:
    """Blank: covered fraction below `blankCoverage` or maximum alpha below `blankMaxAlpha`."""
    return bool(np.mean(alpha > th.coverage_alpha) < th.blank_coverage or alpha.max() < th.blank_max_alpha)


def artifact_heavy(alpha: np.ndarray, th: EvalThresholds) -> tuple[bool, float, int]:
    """(heavy?, haze share of the covered area, speckle components) of one layer's alpha in [0,1].

    Haze: pixels with `hazeLow` < α < `hazeHigh` farther than `hazeBandPx` from the α = 0.5 contour
    (anti-aliased edges are not haze). Speckle: components of the α > 0.5 mask (8-connected) smaller
    than `speckleMaxPx` pixels.
    """
    solid = alpha > 0.5
    contour = solid ^ ndimage.binary_erosion(solid, border_value=0)
    band = (
        ndimage.binary_dilation(contour, iterations=th.haze_band_px) if th.haze_band_px and contour.any() else contour
    )
    covered = int(np.count_nonzero(alpha > th.coverage_alpha))
    haze = (alpha > th.haze_low) & (alpha < th.haze_high) & ~band
    haze_share = float(np.count_nonzero(haze)) / covered if covered else 0.0
    labels, n = ndimage.label(solid, structure=np.ones((3, 3), bool))
    small = int(np.count_nonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:] < th.speckle_max_px)) if n else 0
    return (haze_share > th.haze_fraction or small > th.speckle_count), haze_share, small


def overlap_stats(alphas: Sequence[np.ndarray]) -> tuple[float, float]:
    """(mean, max) over pairs i<j of the overlap coefficient Σmin(a_i,a_j) / min(Σa_i, Σa_j); NaN
    when fewer than two layers are given."""
    if len(alphas) < 2:
        return math.nan, math.nan
    flat = np.stack([a.reshape(-1).astype(np.float32) for a in alphas])
    mass = flat.sum(axis=1, dtype=np.float64)
    vals = []
    for i in range(len(flat)):
        inter = np.minimum(flat[i][None], flat[i + 1 :]).sum(axis=1, dtype=np.float64)
        denom = np.minimum(mass[i], mass[i + 1 :])
        vals.extend(np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0).tolist())
    return float(np.mean(vals)), float(np.max(vals))


def evenness(alphas: Sequence[np.ndarray]) -> float:
    """Normalised entropy of the alpha mass over the given (foreground) layers: 1 = evenly spread,
    0 = all mass in one layer (or none at all). NaN for fewer than two layers. Blank layers count
    (with zero mass), so unused slots lower evenness."""
    if len(alphas) < 2:
        return math.nan
    mass = np.array([float(a.sum(dtype=np.float64)) for a in alphas])
    total = mass.sum()
    if total <= 0:
        return 0.0
    p = mass[mass > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(len(alphas)))


def per_layer_l1(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Index-aligned per-layer errors for k < min(len(pred), len(gt)) (the Stable-Layers figure):
    `l1` = mean |Δ| of premultiplied RGBA over all pixels (primary), `l1_masked` = LayerD's RGB L1
    masked by the GT alpha (secondary)."""
    out = []
    for k in range(min(len(pred), len(gt))):
        p = pred[k].astype(np.float32) / 255.0
        g = gt[k].astype(np.float32) / 255.0
        pp = np.concatenate([p[..., :3] * p[..., 3:], p[..., 3:]], axis=-1)
        gp = np.concatenate([g[..., :3] * g[..., 3:], g[..., 3:]], axis=-1)
        masked, _ = pair_metrics(pred[k], gt[k])
        out.append({"k": k, "l1": float(np.abs(pp - gp).mean()), "l1_masked": masked})
    return out


def design_metrics(
    pred: Sequence[np.ndarray],
    image: np.ndarray,
    th: EvalThresholds,
    gt: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """All A.7 metrics of one predicted stack (back to front, uint8 RGBA) for the input `image`
    (RGB, or RGBA composited over white), optionally against its GT stack."""
    if not pred:
        raise ValueError("pred: empty layer stack")
    target = input_on_white(image)
    alphas = [p[..., 3].astype(np.float32) / 255.0 for p in pred]
    coverage = [float(np.mean(a > th.coverage_alpha)) for a in alphas]
    blank = [is_blank(a, th) for a in alphas]
    fg = range(1, len(pred))

    def l1_to_input(layer: np.ndarray) -> float:
        return float(np.abs(composite([layer], background=1.0) - target).mean())

    duplicate = [k for k in fg if coverage[k] > th.duplicate_coverage and l1_to_input(pred[k]) < th.duplicate_l1]
    # "Layer 0 ≈ input" is judged where the non-blank foreground covers: over the whole canvas a
    # background that kept small elements un-inpainted would pass for a copy of most designs.
    fg_cover = np.zeros(alphas[0].shape, bool)
    for k in fg:
        if not blank[k]:
            fg_cover |= alphas[k] > th.coverage_alpha
    bg_copy = False
    if fg_cover.any():
        diff = np.abs(composite([pred[0]], background=1.0) - target).mean(axis=-1)
        bg_copy = float(diff[fg_cover].mean()) < th.background_copy_l1
    artifacts = [artifact_heavy(a, th) for a, b in zip(alphas, blank, strict=True) if not b]
    nonblank_fg = [alphas[k] for k in fg if not blank[k]]
    sep_mean, sep_max = overlap_stats(nonblank_fg)
    recon = composite(pred, background=1.0)
    groups = occlusion_groups([p[..., 3] for p in pred])
    effective = sum(any(not blank[i] for i in g) for g in groups)
    rec: dict[str, Any] = {
        "layers": len(pred),
        "coverage": coverage,
        "fg_layers": len(pred) - 1,
        "blank_fg": sum(blank[k] for k in fg),
        "duplicate_fg": len(duplicate),
        "degenerate_bg": bool(coverage[0] < th.background_coverage or bg_copy),
        "nonblank_layers": len(artifacts),
        "artifact_layers": sum(a[0] for a in artifacts),
        "haze_max": max((a[1] for a in artifacts), default=0.0),
        "separation_mean": sep_mean,
        "separation_max": sep_max,
        "evenness": evenness(alphas[1:]),
        "recon_psnr": psnr(recon, target),
        "recon_ssim": ssim(recon, target),
        "recon_l1": float(np.abs(recon - target).mean()),
        "effective_layers": effective,
    }
    if gt is not None:
        gt_alphas = [g[..., 3].astype(np.float32) / 255.0 for g in gt]
        rec["gt_layers"] = len(gt)
        rec["gt_groups"] = len(occlusion_groups([g[..., 3] for g in gt]))
        rec["effective_error"] = abs(effective - rec["gt_groups"])
        rec["gt_separation_mean"] = overlap_stats([a for a in gt_alphas[1:] if not is_blank(a, th)])[0]
        rec["per_layer"] = per_layer_l1(pred, gt)
    return rec


# (numerator, denominator) per design for every dataset statistic; a statistic is Σnum / Σden.
RATIO_STATS: dict[str, tuple[str, str | None]] = {
    "blank_layer_rate": ("blank_fg", "fg_layers"),
    "composite_duplicate_rate": ("duplicate_fg", "fg_layers"),
    "artifact_layer_rate": ("artifact_layers", "nonblank_layers"),
}
MEAN_STATS = (
    "degenerate_bg",
    "separation_mean",
    "separation_max",
    "gt_separation_mean",
    "evenness",
    "recon_psnr",
    "recon_ssim",
    "recon_l1",
    "effective_layers",
    "effective_error",
)


def stat_arrays(records: Sequence[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-design (numerator, denominator) of a dataset statistic; undefined values weigh 0."""
    if name == "samples_with_blank":
        num = [float(r["blank_fg"] > 0) for r in records]
        return np.array(num), np.ones(len(records))
    if name in RATIO_STATS:
        n, d = RATIO_STATS[name]
        return np.array([float(r[n]) for r in records]), np.array([float(r[d]) for r in records])
    vals = np.array([float(r.get(name, math.nan)) for r in records], dtype=np.float64)
    ok = np.isfinite(vals)
    return np.where(ok, vals, 0.0), ok.astype(np.float64)


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    d = float(den.sum())
    return float(num.sum()) / d if d > 0 else math.nan


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dataset numbers from `design_metrics` records, plus per-layer L1 by GT layer count L."""
    out: dict[str, Any] = {"designs": len(records)}
    if not records:
        return out
    for name in (*RATIO_STATS, "samples_with_blank", *MEAN_STATS):
        out[name] = ratio(*stat_arrays(records, name))
    out["per_layer_by_L"] = per_layer_by_count(records)
    return out


def per_layer_by_count(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{L: {"designs": n, "l1": [mean per k], "l1_masked": [...], "mean_l1": mean over k}} for the
    designs whose prediction has exactly the GT's L layers."""
    buckets: dict[int, list[list[dict[str, float]]]] = {}
    for r in records:
        if "per_layer" in r and r["layers"] == r["gt_layers"]:
            buckets.setdefault(r["gt_layers"], []).append(r["per_layer"])
    out = {}
    for n_layers in sorted(buckets):
        rows = buckets[n_layers]
        l1 = np.array([[x["l1"] for x in row] for row in rows])
        l1m = np.array([[x["l1_masked"] for x in row] for row in rows])
        out[str(n_layers)] = {
            "designs": len(rows),
            "l1": l1.mean(axis=0).tolist(),
            "l1_masked": l1m.mean(axis=0).tolist(),
            "mean_l1": float(l1.mean()),
        }
    return out
