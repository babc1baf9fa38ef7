"""The rollout viewer: self-contained HTML pages built from a run's rollout records.

`build_viewer(run_uri, out)` writes into `out` (a directory or store URI):

    index.html                  every selected step: groups, zero-spread groups, spread per stage,
                                a plot of the within-group spread over steps; links to the pages
    zero-spread.html            the groups whose candidates all got the same reward, with links
    viewer.json                 what was rendered, so a rebuild renders only new or changed steps
    step-NNNNNN.html[-pK.html]  one step's groups, at most `per_page` per page: input, candidates
                                (layers on a checkerboard), stage-1 criteria and judge answers,
                                the stage-2 grid with its shuffled order mapped back, penalties,
                                reward, advantage, failures and fallbacks marked

Like the evaluation report, the pages inline their images as base64 PNG and use no scripts and no
external requests; the filters are CSS checkboxes. Only the page being written has its images in
memory: the index is built from the `scores.json` files alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stable_layers.layers import as_rgba_array, on_checkerboard
from stable_layers.observability import viewer_page as vp
from stable_layers.observability.rollout_view import (
    GroupView,
    StepSummary,
    group_view,
    image_keys,
    in_steps,
    list_groups,
    page_name,
    parse_steps,
    read_scores,
    summarize,
)
from stable_layers.storage import NotFoundError, Store, open_store

THUMB = 128
"""Longest side of a layer thumbnail on the step pages, pixels."""
MANIFEST = "viewer.json"
"""What an earlier build rendered (run, perPage, per step its groups and neighbours)."""


class NoRecordsError(ValueError):
    """The run holds no (selected) rollout records."""


def thumb(png: bytes, max_side: int = THUMB) -> str:
    """A stored PNG (RGBA) → `data:` URI of a thumbnail on a checkerboard."""
    rgba = as_rgba_array(Image.open(io.BytesIO(png)))
    rgb = on_checkerboard(rgba, cell=max(4, max(rgba.shape[:2]) // 16))
    pil = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(store: Store, key: str, alt: str) -> str:
    try:
        src = thumb(store.get_bytes(key))
    except Exception as err:  # one missing PNG should not lose the rest of the page
        return f'<span class="missing" title="{html.escape(str(err))}">missing {html.escape(alt)}</span>'
    return f'<img class="thumb" src="{src}" alt="{html.escape(alt)}">'


def spread_plot(summaries: list[StepSummary]) -> bytes | None:
    """PNG: mean within-group std per stage (and of the reward) over steps, and zero-spread groups."""
    if not summaries:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = [s.step for s in summaries]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.0))
    for key, label, colour in (("reward", "reward", "#222"), ("1", "stage 1", "#1f77b4"), ("2", "stage 2", "#d9541e")):
        pts = [(s.step, s.spread[key]) for s in summaries if s.spread.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label, color=colour)
    from matplotlib.ticker import MaxNLocator

    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("within-group std (mean over recorded groups)")
    ax.legend(fontsize=8)
    ax2.bar(steps, [s.zero_spread / max(1, s.groups) for s in summaries], color="#b42318")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("share of groups with zero spread")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def group_html(store: Store, view: GroupView) -> str:
    """One group's section, its PNGs read from the store now."""
    input_key, cand_keys = image_keys(view.base, {"groupSize": len(view.candidates), "layers": view.layers})
    imgs = [
        [_img(store, k, f"candidate {c} layer {i}") for i, k in enumerate(keys)] for c, keys in enumerate(cand_keys)
    ]
    return vp.group_section(view, _img(store, input_key, "input"), imgs)


@dataclass
class ViewerResult:
    index: str
    """Where index.html went."""
    steps: int
    groups: int
    pages: list[str]
    rendered: list[str]
    """The pages written by this build (the others were kept from an earlier one)."""


class _Output:
    """Where the pages go: a local directory gets world-readable files replaced atomically (pages
    are meant to be opened and shared); a URI goes through its store."""

    def __init__(self, out: str | Path | Store):
        self.root: Path | None = None
        self.store: Store | None = None
        if isinstance(out, str | Path) and "://" not in str(out):
            self.root = Path(out)
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.store = open_store(str(out)) if isinstance(out, str | Path) else out

    def put(self, name: str, data: bytes) -> None:
        if self.store is not None:
            self.store.put_bytes(name, data)
            return
        assert self.root is not None
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes | None:
        try:
            if self.store is not None:
                return self.store.get_bytes(name)
            assert self.root is not None
            return (self.root / name).read_bytes()
        except (OSError, NotFoundError):
            return None

    def url(self, name: str) -> str:
        return self.store.url(name) if self.store is not None else str(self.root / name)


def _previous(output: _Output, run_url: str, per_page: int) -> dict[str, Any]:
    """The step pages an earlier build of the same run left in `output` (by step), if reusable."""
    raw = output.get(MANIFEST)
    try:
        manifest = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if manifest.get("format") != 1 or manifest.get("run") != run_url or manifest.get("perPage") != per_page:
        return {}
    return dict(manifest.get("steps") or {})


def build_viewer(
    run: str | Path | Store,
    out: str | Path | Store,
    *,
    steps: str | None = None,
    per_page: int = 10,
    plot: bool = True,
    rebuild: bool = False,
) -> ViewerResult:
    """Write the viewer of the run `run` (URI or store) into `out` (see the module docstring).

    A step page an earlier build wrote for the same groups (and the same neighbouring steps) is
    kept, not rendered again, unless `rebuild`: re-running the viewer on a run in progress
    renders only its new steps. The index and the zero-spread list are always rebuilt."""
    if per_page < 1:
        raise ValueError("--per-page must be at least 1")
    src = open_store(run) if isinstance(run, str | Path) else run
    output = _Output(out)
    ranges = parse_steps(steps)
    listing = {s: b for s, b in list_groups(src).items() if in_steps(s, ranges)}
    if not listing:
        what = "no rollout records" if steps is None else f"no rollout records in --steps {steps}"
        raise NoRecordsError(
            f"{src.url('rollouts/')}: {what}; records are written when rollouts.rate > 0 (see docs/storage.md)"
        )
    previous = {} if rebuild else _previous(output, src.url(), per_page)
    summaries: list[StepSummary] = []
    zero: list[tuple[GroupView, str]] = []
    pages: list[str] = []
    rendered: list[str] = []
    manifest_steps: dict[str, Any] = {}
    for step, bases in listing.items():
        views = [group_view(b, body) for b, body in zip(bases, read_scores(src, bases), strict=True)]
        summaries.append(summarize(step, views))
        n_pages = -(-len(views) // per_page)
        neighbours = _neighbours(listing, step)
        entry = {"groups": bases, "neighbours": list(neighbours)}
        keep = previous.get(str(step)) == entry and all(
            output.get(page_name(step, p + 1)) is not None for p in range(n_pages)
        )
        manifest_steps[str(step)] = entry
        for p in range(n_pages):
            chunk = views[p * per_page : (p + 1) * per_page]
            name = page_name(step, p + 1)
            zero += [(v, name) for v in chunk if v.zero_spread]
            pages.append(name)
            if keep:
                continue
            sections = [group_html(src, v) for v in chunk]  # images of this page only
            output.put(name, vp.step_page(src.url(), step, p + 1, n_pages, sections, neighbours).encode("utf-8"))
            rendered.append(name)
    output.put("zero-spread.html", vp.zero_page(src.url(), zero).encode("utf-8"))
    manifest = {"format": 1, "run": src.url(), "perPage": per_page, "steps": manifest_steps}
    output.put(MANIFEST, json.dumps(manifest).encode("utf-8"))
    png = spread_plot(summaries) if plot else None
    index = vp.index_page(src.url(), summaries, png, steps)
    output.put("index.html", index.encode("utf-8"))  # last: its presence marks a complete viewer
    return ViewerResult(output.url("index.html"), len(summaries), sum(s.groups for s in summaries), pages, rendered)


def _neighbours(listing: dict[int, list[str]], step: int) -> tuple[int | None, int | None]:
    keys = list(listing)
    i = keys.index(step)
    return (keys[i - 1] if i > 0 else None), (keys[i + 1] if i + 1 < len(keys) else None)
