"""Paired bootstrap confidence intervals over designs for base → fine-tuned differences.

Both models are evaluated on the same designs with the same seeds, so designs are resampled
*jointly*: one multinomial resample of the design indices is applied to both models, and the
difference of the statistic is recorded. Every statistic is a ratio of sums Σnum/Σden over designs
(a plain mean has den = 1), which covers rates like "blank foreground layers / foreground layers"
without bias towards designs with few layers. Resampling is vectorised: a B×N count matrix times
the per-design vectors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def paired_bootstrap(
    base_num: np.ndarray,
    base_den: np.ndarray,
    ft_num: np.ndarray,
    ft_den: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Statistic of each model, their difference (fine-tuned − base) and its percentile interval.

    Resamples where a denominator is zero are dropped; `ci` is null when fewer than 2 designs or
    no resamples are given.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (base_num, base_den, ft_num, ft_den)]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("paired_bootstrap: base and fine-tuned arrays must have one entry per design")
    bn, bd, fn, fd = arrays

    def rat(num: np.ndarray, den: np.ndarray) -> float:
        d = float(den.sum())
        return float(num.sum()) / d if d > 0 else math.nan

    base, ft = rat(bn, bd), rat(fn, fd)
    out: dict[str, Any] = {"base": base, "finetuned": ft, "diff": ft - base, "ci": None, "designs": n}
    if n < 2 or resamples <= 0:
        return out
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # B×N
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = counts @ fn / (counts @ fd) - counts @ bn / (counts @ bd)
    diff = diff[np.isfinite(diff)]
    if diff.size:
        tail = (1.0 - level) / 2.0 * 100.0
        lo, hi = np.percentile(diff, [tail, 100.0 - tail])
        out["ci"] = [float(lo), float(hi)]
        out["resamples"] = int(diff.size)
    return out
