"""Per-design results → the numbers of `report.json`: per model, and base vs fine-tuned.

A design result (`DesignResult`) holds, per model, the LayerD levels and the A.7 record of one
design. `summarise` aggregates each model and, when two models were run, compares them with paired
bootstrap intervals over the designs both models could be scored on (stats.paired_bootstrap).
"""

from __future__ import annotations

import math
import re
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

LOWER_IS_BETTER = frozenset(
    {
        "blank_layer_rate",
        "composite_duplicate_rate",
        "artifact_layer_rate",
        "samples_with_blank",
        "degenerate_bg",
        "separation_mean",
        "recon_l1",
        "effective_error",
        "rgb_l1",
    }
)
"""Statistics for which a decrease is an improvement (besides every `*_l1*` key)."""

HEADLINE_LABELS = {
    "blank_layer_rate": "blank-layer rate",
    "composite_duplicate_rate": "composite-duplicate rate",
    "artifact_layer_rate": "artifact-heavy layer rate",
    "recon_l1": "recomposition L1",
    "recon_psnr": "recomposition PSNR (dB)",
}
"""The headline statistics of issue 8 besides LayerD (k = 0 and k = maxEdits) and per-layer L1 by
L, which `headline_changes` adds from the comparison's keys."""


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
        # A design enters a statistic only where it is defined for both models (paired), and only
        # those designs are resampled: resampling all designs and dropping the draws without a
        # defined one would condition on the few that are (one L=3 design gave a zero-width
        # "interval"), and `designs` would overstate the evidence.
        keep = (b[1] > 0) & (t[1] > 0)
        out[key] = paired_bootstrap(b[0][keep], b[1][keep], t[0][keep], t[1][keep], resamples=resamples, seed=seed)

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


def lower_is_better(key: str) -> bool:
    return key in LOWER_IS_BETTER or "_l1" in key


def verdict(key: str, ci: Sequence[float] | None) -> str:
    """`improved` / `worse` when the 95% interval of fine-tuned − base excludes zero (in the
    statistic's good / bad direction), `no significant change` when it contains zero, and
    `no interval` when none could be computed (fewer than 2 designs, or bootstrap off)."""
    if not ci:
        return "no interval"
    if ci[0] <= 0 <= ci[1]:
        return "no significant change"
    return "improved" if (ci[1] < 0) == lower_is_better(key) else "worse"


def headline_changes(comparison: dict[str, Any], max_edits: int) -> list[dict[str, Any]]:
    """The changes issue 8 asks the report to state, in a fixed order, each with its interval
    and verdict: blank-layer and composite-duplicate rates, LayerD RGB L1 / alpha IoU at k = 0
    and k = maxEdits, per-layer L1 for every L, then artifact rate and recomposition."""
    keys = ["blank_layer_rate", "composite_duplicate_rate"]
    labels = dict(HEADLINE_LABELS)
    for k in sorted({0, max_edits}):
        keys += [f"layerd_rgb_l1_k{k}", f"layerd_alpha_iou_k{k}"]
        labels[f"layerd_rgb_l1_k{k}"] = f"LayerD RGB L1 (k={k})"
        labels[f"layerd_alpha_iou_k{k}"] = f"LayerD alpha IoU (k={k})"
    per_l = sorted((int(m.group(1)), key) for key in comparison if (m := re.fullmatch(r"per_layer_l1_L(\d+)", key)))
    for n_layers, key in per_l:
        keys.append(key)
        labels[key] = f"per-layer L1 (L={n_layers})"
    keys += ["artifact_layer_rate", "recon_l1", "recon_psnr"]
    rows = []
    for key in keys:
        c = comparison.get(key)
        if c is None:
            continue
        rows.append(
            {
                "key": key,
                "label": labels[key],
                "base": c["base"],
                "finetuned": c["finetuned"],
                "diff": c["diff"],
                "ci": c["ci"],
                "designs": c["designs"],
                "lowerIsBetter": lower_is_better(key),
                "verdict": verdict(key, c["ci"]),
            }
        )
    return rows


def summarise(
    results: Sequence[DesignResult], models: Sequence[str], *, max_edits: int, resamples: int, seed: int = 0
) -> dict[str, Any]:
    out: dict[str, Any] = {"models": {m: _model_summary(results, m, max_edits) for m in models}}
    if len(models) == 2:
        out["comparison"] = compare(results, models[0], models[1], max_edits=max_edits, resamples=resamples, seed=seed)
        out["changes"] = headline_changes(out["comparison"], max_edits)
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
