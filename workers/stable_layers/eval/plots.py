"""Matplotlib figures of an evaluation summary, as PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
from typing import Any

COLOURS = {"base": "#8c8c8c", "finetuned": "#d9541e"}
LABELS = {"base": "base", "finetuned": "fine-tuned"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def per_layer_l1(summary: dict[str, Any]) -> bytes | None:
    """Per-layer L1 by layer count L (the Stable-Layers figure): one panel per L, bars per layer
    k ("Pred 0" = background), one bar per model. None when no design has per-layer results."""
    models = summary["models"]
    counts = sorted({int(n) for m in models.values() for n in m["metrics"].get("per_layer_by_L", {})})
    if not counts:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(counts), figsize=(3.2 * len(counts), 3.0), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, n_layers in zip(axes[0], counts, strict=True):
        for j, (name, m) in enumerate(models.items()):
            row = m["metrics"].get("per_layer_by_L", {}).get(str(n_layers))
            if not row:
                continue
            xs = [k + (j - (len(models) - 1) / 2) * width for k in range(n_layers)]
            ax.bar(xs, row["l1"], width, color=COLOURS.get(name), label=f"{LABELS.get(name, name)}")
        ax.set_xticks(range(n_layers), [f"Pred {k}" for k in range(n_layers)], fontsize=7)
        n = max(
            m["metrics"].get("per_layer_by_L", {}).get(str(n_layers), {}).get("designs", 0) for m in models.values()
        )
        ax.set_title(f"L = {n_layers} ({n} designs)", fontsize=9)
    axes[0][0].set_ylabel("L1 (premultiplied RGBA)")
    axes[0][-1].legend(fontsize=7)
    return _png(fig)


RATE_KEYS = (
    ("blank_layer_rate", "blank"),
    ("composite_duplicate_rate", "composite copy"),
    ("degenerate_bg", "degenerate bg"),
    ("artifact_layer_rate", "artifact-heavy"),
)


def rates(summary: dict[str, Any]) -> bytes:
    """Blank / duplicate / degenerate-background / artifact rates per model, with the bootstrap
    95% interval of the fine-tuned model's difference drawn on its bar when available."""
    plt = _pyplot()
    models = summary["models"]
    comparison = summary.get("comparison", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    width = 0.8 / max(1, len(models))
    for j, (name, m) in enumerate(models.items()):
        vals = [m["metrics"].get(key) or 0.0 for key, _ in RATE_KEYS]
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(RATE_KEYS))]
        err = None
        if name != "base" and comparison:
            lo, hi = [], []
            for (key, _), _v in zip(RATE_KEYS, vals, strict=True):
                c = comparison.get(key, {})
                ci, diff = c.get("ci"), c.get("diff")
                lo.append(max(0.0, diff - ci[0]) if ci and diff is not None else 0.0)
                hi.append(max(0.0, ci[1] - diff) if ci and diff is not None else 0.0)
            err = [lo, hi]
        ax.bar(xs, vals, width, color=COLOURS.get(name), label=LABELS.get(name, name), yerr=err, capsize=3)
    ax.set_xticks(range(len(RATE_KEYS)), [label for _, label in RATE_KEYS], fontsize=8)
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _png(fig)


def layerd_curves(summary: dict[str, Any]) -> bytes:
    """LayerD RGB L1 and alpha IoU against the number of allowed merges k."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.5, 2.8))
    for name, m in summary["models"].items():
        levels = m["layerd"]
        if not levels:
            continue
        ks = [row["k"] for row in levels]
        kw = {"color": COLOURS.get(name), "marker": "o", "label": LABELS.get(name, name)}
        a1.plot(ks, [row["rgb_l1"] for row in levels], **kw)
        a2.plot(ks, [row["alpha_iou"] for row in levels], **kw)
    a1.set_title("RGB L1 ↓", fontsize=9)
    a2.set_title("alpha soft IoU ↑", fontsize=9)
    for ax in (a1, a2):
        ax.set_xlabel("max merges k")
    a2.legend(fontsize=7)
    return _png(fig)
