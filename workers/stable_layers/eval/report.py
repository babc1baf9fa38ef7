"""`report.json` and a self-contained `report.html` (images and plots inlined as base64 PNG, no
scripts, no external requests), so the page opens from a file, an S3 console download or an
artifact store without a server."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
from PIL import Image

from stable_layers.eval import plots
from stable_layers.eval.summary import verdict
from stable_layers.layers import on_checkerboard

THUMB = 160
"""Longest side of gallery thumbnails in pixels."""

METRIC_ROWS = (
    ("blank_layer_rate", "blank-layer rate ↓"),
    ("samples_with_blank", "designs with ≥1 blank layer ↓"),
    ("composite_duplicate_rate", "composite-duplicate rate ↓"),
    ("degenerate_bg", "degenerate-background rate ↓"),
    ("artifact_layer_rate", "artifact-heavy rate ↓"),
    ("separation_mean", "layer overlap (mean) ↓"),
    ("separation_max", "layer overlap (max) ↓"),
    ("gt_separation_mean", "GT layer overlap (reference)"),
    ("evenness", "distribution evenness ↑"),
    ("recon_psnr", "recomposition PSNR ↑"),
    ("recon_ssim", "recomposition SSIM ↑"),
    ("recon_l1", "recomposition L1 ↓"),
    ("effective_error", "|effective − GT groups| ↓"),
)


@dataclass
class GalleryItem:
    id: str
    image: np.ndarray
    gt: list[np.ndarray] | None
    models: dict[str, list[np.ndarray]] = field(default_factory=dict)
    caption: dict[str, str] = field(default_factory=dict)


def png_b64(img: np.ndarray, max_side: int = THUMB) -> str:
    """uint8 RGB(A) array → `data:` URI of a PNG thumbnail (RGBA is shown on a checkerboard)."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = on_checkerboard(a, cell=max(4, max(a.shape[:2]) // 32))
    pil = Image.fromarray(a[..., :3])
    pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _figure(src: str, caption: str) -> str:
    alt = html.escape(caption)
    return f'<figure><img class="thumb" src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def _gallery(items: Sequence[GalleryItem]) -> str:
    parts = []
    for it in items:
        rows = [f'<div class="strip"><span class="label">input</span>{_figure(png_b64(it.image), "input")}</div>']
        stacks = ([("GT", it.gt)] if it.gt else []) + [(plots.LABELS.get(n, n), lay) for n, lay in it.models.items()]
        for label, layers in stacks:
            figs = "".join(_figure(png_b64(lay), f"layer {k}") for k, lay in enumerate(layers))
            rows.append(f'<div class="strip"><span class="label">{html.escape(label)}</span>{figs}</div>')
        caption = "; ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in it.caption.items())
        parts.append(
            f'<div class="design"><h3>{html.escape(it.id)}</h3><div class="meta">{caption}</div>{"".join(rows)}</div>'
        )
    return "\n".join(parts) or "<p>(no designs)</p>"


def _layerd_table(summary: dict[str, Any]) -> str:
    models = summary["models"]
    ks = [row["k"] for row in next(iter(models.values()))["layerd"]] if models else []
    if not ks:
        return "<p>No design could be scored with the LayerD protocol.</p>"
    head = "".join(f"<th>k={k}</th>" for k in ks)
    body = []
    for name, m in models.items():
        label = html.escape(plots.LABELS.get(name, name))
        for metric in ("rgb_l1", "alpha_iou", "avg_edits"):
            cells = "".join(f"<td>{_fmt(row[metric])}</td>" for row in m["layerd"])
            body.append(f"<tr><td>{label} {metric}</td>{cells}</tr>")
    return f"<table><tr><th>model / metric</th>{head}</tr>{''.join(body)}</table>"


def _metrics_table(summary: dict[str, Any]) -> str:
    models = summary["models"]
    head = "".join(f"<th>{html.escape(plots.LABELS.get(n, n))}</th>" for n in models)
    body = []
    for key, label in METRIC_ROWS:
        cells = "".join(f"<td>{_fmt(m['metrics'].get(key))}</td>" for m in models.values())
        body.append(f"<tr><td>{label}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(body)}</table>"


def _comparison_table(summary: dict[str, Any]) -> str:
    comp = summary.get("comparison")
    if not comp:
        return "<p>Only the base model was evaluated (pass --checkpoint to compare).</p>"
    body: list[str] = []
    detail: list[str] = []
    for key, c in comp.items():
        ci = c.get("ci")
        cls = {"improved": ' class="better"', "worse": ' class="worse"'}.get(verdict(key, ci), "")
        interval = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–"
        # per-layer rows of every (L, k) would swamp the headline table: they go in a fold
        (detail if re.search(r"_L\d+_k\d+$", key) else body).append(
            f"<tr><td>{html.escape(key)}</td><td>{_fmt(c['base'])}</td><td>{_fmt(c['finetuned'])}</td>"
            f"<td{cls}>{_fmt(c['diff'])}</td><td>{interval}</td><td>{c['designs']}</td></tr>"
        )
    head = (
        "<tr><th>statistic</th><th>base</th><th>fine-tuned</th><th>difference</th><th>95% CI</th><th>designs</th></tr>"
    )
    folded = (
        f"<details><summary>per layer k of each L</summary><table>{head}{''.join(detail)}</table></details>"
        if detail
        else ""
    )
    return f"{_changes_text(summary)}<table>{head}{''.join(body)}</table>{folded}"


def _changes_text(summary: dict[str, Any]) -> str:
    """One sentence per verdict over the headline statistics, so that what did not improve is
    said in words, not only left uncoloured in the table."""
    changes = summary.get("changes") or []
    groups: dict[str, list[str]] = {}
    for row in changes:
        groups.setdefault(row["verdict"], []).append(html.escape(row["label"]))
    parts = [
        f"<b>{title}</b>: {'; '.join(groups[v])}."
        for v, title in (
            ("improved", "Improved (95% interval excludes zero)"),
            ("worse", "Worse (95% interval excludes zero)"),
            ("no significant change", "No significant change (interval contains zero)"),
            ("no interval", "No interval (too few designs)"),
        )
        if groups.get(v)
    ]
    return f'<p class="changes">{"<br>".join(parts)}</p>' if parts else ""


def render_html(report: dict[str, Any], gallery: Sequence[GalleryItem]) -> str:
    """The HTML page of a report dict (as written to report.json) and its gallery."""
    summary = report["summary"]
    imgs = []
    for fig in (plots.per_layer_l1(summary), plots.layerd_curves(summary), plots.rates(summary)):
        if fig:
            imgs.append(f'<img src="data:image/png;base64,{base64.b64encode(fig).decode("ascii")}" alt="plot">')
    ds = report["dataset"]
    meta = (
        f"data <b>{html.escape(report['data'])}</b> · {ds['designs']} designs evaluated · "
        f"model {html.escape(str(report['model']))} · checkpoint {html.escape(str(report.get('checkpoint') or 'none'))} · "
        f"{html.escape(report['createdAt'])}"
    )
    notes = "<br>".join(html.escape(n) for n in report.get("notes", []))
    template = Template(resources.files("stable_layers.eval").joinpath("templates/report.html").read_text("utf-8"))
    return template.substitute(
        title=html.escape(report["name"]),
        meta=meta,
        layerd_table=_layerd_table(summary),
        metrics_table=_metrics_table(summary),
        comparison_table=_comparison_table(summary),
        plots="".join(imgs),
        gallery=_gallery(gallery),
        notes=notes,
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(out: str | Path, report: dict[str, Any], gallery: Sequence[GalleryItem]) -> str:
    """Write `report.html`, then `report.json` last (its presence marks a complete report), to a
    local directory or any store URI (`s3://…`, `file://…`). Each file is replaced atomically.
    Returns the location of report.json."""
    page = render_html(report, gallery).encode("utf-8")
    data = json.dumps(report, indent=1, allow_nan=False).encode("utf-8")
    text = str(out)
    if "://" in text:
        from stable_layers.storage import open_store

        store = open_store(text)
        store.put_bytes("report.html", page)
        store.put_bytes("report.json", data)
        return store.url("report.json")
    directory = Path(text)
    _atomic_write(directory / "report.html", page)
    _atomic_write(directory / "report.json", data)
    return str(directory / "report.json")
