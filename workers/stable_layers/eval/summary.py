"""Per-design results → the numbers of `report.json`: per model, and base vs fine-tuned.

A design result (`DesignResult`) holds, per model, the LayerD levels and the A.7 record of one
design. `summarise` aggregates each model and, when two models were run, compares them with paired
bootstrap intervals over the designs both models could be scored on (stats.paired_bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stable_layers.eval import metrics
from stable_layers.eval.layerd import aggregate_levels, at_level
from stable_layers.eval.stats import paired_bootstrap

COMPARED_RATIOS = (
    "blank_layer_rate",
    "composite_duplicate_rate",
    "artifact_layer_rate",
    "samples_with_blank",
    "degenerate_bg",
    "separation_mean",
    "evenness",
    "recon_psnr",
    "recon_l1",
    "effective_error",
)


@dataclass
class ModelResult:
    layerd: list[dict[str, Any]] | None  # None: skipped by the LayerD rule (< 2 layers)
    metrics: dict[str, Any]


@dataclass
class DesignResult:
    id: str
    gt_layers: int
    models: dict[str, ModelResult] = field(default_factory=dict)


def _model_summary(results: Sequence[DesignResult], name: str, max_edits: int) -> dict[str, Any]:
    rows = [r.models[name] for r in results if name in r.models]
    scored = [m.layerd for m in rows if m.layerd is not None]
    return {
        "layerd": aggregate_levels(scored, max_edits),
        "layerdSkipped": len(rows) - len(scored),
        "metrics": metrics.aggregate([m.metrics for m in rows]),
    }


def _layerd_arrays(rows: Sequence[ModelResult], metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    vals = [at_level(m.layerd, k)[metric] if m.layerd is not None else 0.0 for m in rows]
    return np.array(vals, dtype=np.float64), np.array([m.layerd is not None for m in rows], dtype=np.float64)


def _per_layer_arrays(rows: Sequence[ModelResult], n_layers: int, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    num, den = [], []
    for m in rows:
        rec = m.metrics
        ok = "per_layer" in rec and rec["gt_layers"] == n_layers and rec["layers"] == n_layers
        if ok:
            vals = [x["l1"] for x in rec["per_layer"]]
            num.append(float(np.mean(vals)) if k is None else vals[k])
        else:
            num.append(0.0)
        den.append(float(ok))
    return np.array(num), np.array(den)


def compare(
    results: Sequence[DesignResult], base: str, tuned: str, *, max_edits: int, resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Fine-tuned − base for every headline statistic, each with a paired bootstrap 95% CI."""
    both = [r for r in results if base in r.models and tuned in r.models]
    b_rows = [r.models[base] for r in both]
    t_rows = [r.models[tuned] for r in both]
    out: dict[str, Any] = {}

    def add(key: str, b: tuple[np.ndarray, np.ndarray], t: tuple[np.ndarray, np.ndarray]) -> None:
        # A design enters a statistic only where it is defined for both models (paired).
        den = np.minimum(b[1] > 0, t[1] > 0).astype(np.float64)
        b_den = np.where(den > 0, b[1], 0.0)
        t_den = np.where(den > 0, t[1], 0.0)
        out[key] = paired_bootstrap(b[0] * (den > 0), b_den, t[0] * (den > 0), t_den, resamples=resamples, seed=seed)

    for name in COMPARED_RATIOS:
        add(
            name,
            metrics.stat_arrays([m.metrics for m in b_rows], name),
            metrics.stat_arrays([m.metrics for m in t_rows], name),
        )
    for k in sorted({0, max_edits}):
        for metric in ("rgb_l1", "alpha_iou"):
            add(f"layerd_{metric}_k{k}", _layerd_arrays(b_rows, metric, k), _layerd_arrays(t_rows, metric, k))
    counts = sorted({r.gt_layers for r in both})
    for n_layers in counts:
        b, t = _per_layer_arrays(b_rows, n_layers, None), _per_layer_arrays(t_rows, n_layers, None)
        if b[1].sum() == 0:
            continue
        add(f"per_layer_l1_L{n_layers}", b, t)
        for k in range(n_layers):
            add(
                f"per_layer_l1_L{n_layers}_k{k}",
                _per_layer_arrays(b_rows, n_layers, k),
                _per_layer_arrays(t_rows, n_layers, k),
            )
    return out


def summarise(
    results: Sequence[DesignResult], models: Sequence[str], *, max_edits: int, resamples: int, seed: int = 0
) -> dict[str, Any]:
    out: dict[str, Any] = {"models": {m: _model_summary(results, m, max_edits) for m in models}}
    if len(models) == 2:
        out["comparison"] = compare(results, models[0], models[1], max_edits=max_edits, resamples=resamples, seed=seed)
    return out


def json_safe(value: Any) -> Any:
    """NaN/inf → None (JSON has no NaN; browsers reject it), numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
