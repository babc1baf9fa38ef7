"""HTML of the rollout viewer's pages (pure string functions; `viewer.py` reads and writes).

No scripts: the filters are checkboxes whose `:checked` state hides rows and groups through CSS,
so a page works opened from a file, an S3 console download or an artifact store.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from stable_layers.observability.rollout_view import GroupView, StepSummary, page_name
from stable_layers.spec import CRITERIA

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 20px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 22px 0 8px 0; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 14px; margin: 0 0 4px 0; }
.meta, .note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; }
td.l, th.l { text-align: left; }
nav a { margin-right: 12px; }
.group { margin: 12px 0 26px 0; padding: 8px; border: 1px solid #e4e4e4; border-radius: 4px; }
.group.zero { border-color: #b42318; }
.badge { display: inline-block; font-size: 11px; padding: 0 5px; border-radius: 3px; margin-left: 4px; }
.badge.zero { background: #b42318; color: #fff; }
.badge.warn { background: #f5a623; color: #222; }
.layers { display: flex; gap: 4px; }
img.thumb { display: block; border: 1px solid #ccc; width: 96px; height: auto; }
.input img.thumb { width: 128px; }
td.answer { background: #fff3c4; text-align: left; font-family: ui-monospace, monospace; font-size: 11px;
  max-width: 360px; white-space: pre-wrap; word-break: break-word; }
td.answer .bad { color: #b42318; font-weight: 600; }
.problems { color: #b42318; font-size: 12px; margin: 4px 0; }
.plot img { max-width: 100%; }
.filter { font-size: 13px; margin: 8px 0; }
#zero-only:checked ~ .groups .group:not(.zero) { display: none; }
#zero-only:checked ~ table tr.step:not(.haszero) { display: none; }
.missing { color: #b42318; font-size: 11px; }
"""


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _answers(answers: list[str], parsed: bool) -> str:
    """Every recorded attempt; the ones that could not be used are marked."""
    parts = []
    for i, text in enumerate(answers):
        used = parsed and i == len(answers) - 1
        label = "" if used else '<span class="bad">unusable: </span>'
        if text.startswith("<error:"):
            label = '<span class="bad">request failed: </span>'
        parts.append(f"{label}{html.escape(text)}")
    return "\n".join(parts) or "–"


def candidate_rows(view: GroupView, layer_imgs: list[list[str]]) -> str:
    head = (
        "<tr><th>#</th><th class='l'>layers (back to front)</th><th>reward</th><th>advantage</th>"
        "<th>stage 1</th><th>stage 2</th>"
        + "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in CRITERIA)
        + "<th class='l'>penalties</th><th class='l'>flags</th>"
    )
    # the pixel reward asks no judge: no empty answer column for it
    judged = any((c.get("raw") or {}).get("stage1_answers") for c in view.candidates)
    head += "<th class='l'>judge answer (stage 1)</th></tr>" if judged else "</tr>"
    rows = []
    for c, imgs in zip(view.candidates, layer_imgs, strict=True):
        raw = c.get("raw") or {}
        stages = c.get("stages") or {}
        crit = c.get("criteria") or {}
        failed = bool((c.get("flags") or {}).get("judge_failed"))
        # a fallback candidate's criteria are the group's means, not the judge's: show them as such
        crit_cells = "".join(f"<td>{'(mean) ' if failed else ''}{_f(crit.get(k), 3)}</td>" for k in CRITERIA)
        pens = raw.get("penalties") or {}
        pen = ", ".join(f"{html.escape(k)} −{v:.3f}" for k, v in pens.items()) or "–"
        flags = [k.replace("_", " ") for k, v in (c.get("flags") or {}).items() if v]
        flag_html = "".join(f'<span class="badge warn">{html.escape(f)}</span>' for f in flags) or "–"
        answer = _answers(list(raw.get("stage1_answers") or []), "stage1_scores" in raw)
        answer_cell = f"<td class='answer'>{answer}</td>" if judged else ""
        rows.append(
            f"<tr class='cand'><td>{c.get('index')}</td><td class='l'><div class='layers'>{''.join(imgs)}</div></td>"
            f"<td>{_f(c.get('reward'))}</td><td>{_f(c.get('advantage'), 3)}</td>"
            f"<td>{_f(stages.get('1'))}</td><td>{_f(stages.get('2'))}</td>{crit_cells}"
            f"<td class='l'>{pen}</td><td class='l'>{flag_html}</td>{answer_cell}</tr>"
        )
    return f"<table class='cands'>{head}{''.join(rows)}</table>"


def grid_table(view: GroupView) -> str:
    """Each grid request: printed number → candidate shown there → score it got; then the answer."""
    if not view.grid:
        return "<p class='note'>No stage-2 grid for this group (reward.grid off, or the pixel reward).</p>"
    n = max(len(r.shown) for r in view.grid)
    head = "<tr><th class='l'>grid request</th>" + "".join(f"<th>#{i + 1}</th>" for i in range(n))
    head += "<th class='l'>judge answer (stage 2)</th></tr>"
    rows = []
    for r, rep in enumerate(view.grid):
        cells = "".join(
            f"<td>cand {cand} · {_f(score, 1) if score is not None else '<span class=bad>–</span>'}</td>"
            for cand, score in zip(rep.shown, rep.scores, strict=True)
        )
        parsed = any(s is not None for s in rep.scores)
        rows.append(
            f"<tr><td class='l'>{r + 1}</td>{cells}<td class='answer'>{_answers(rep.answers, parsed)}</td></tr>"
        )
    return (
        "<p class='note'>The grid shows the candidates in a fresh shuffled order per request; "
        "#k is the number printed on the grid, mapped back to the candidate index and the score it got.</p>"
        f"<table class='grid'>{head}{''.join(rows)}</table>"
    )


def group_section(view: GroupView, input_img: str, layer_imgs: list[list[str]]) -> str:
    sp = view.spread
    badges = '<span class="badge zero">zero spread</span>' if view.zero_spread else ""
    if view.problems:
        badges += f'<span class="badge warn">{len(view.problems)} judge problem(s)</span>'
    st = view.stats
    judge = ""
    if "requests" in st:
        judge = (
            f" · judge requests {_f(st.get('requests'))} (ok {_f(st.get('requests_ok'))}, unparsable "
            f"{_f(st.get('requests_parse_error'))}, failed {_f(st.get('requests_error'))}; re-asks "
            f"{_f(st.get('reasks'))}, retries {_f(st.get('retries'))})"
        )
    meta = f"within-group std: reward {_f(sp['reward'])}, stage 1 {_f(sp['1'])}, stage 2 {_f(sp['2'])}{judge}"
    probs = "".join(f"<div>{html.escape(p)}</div>" for p in view.problems)
    cls = "group zero" if view.zero_spread else "group"
    anchor = html.escape(view.base.rsplit("/", 1)[-1])
    return (
        f'<section class="{cls}" id="g-{anchor}"><h3>{html.escape(view.image_id)}{badges}</h3>'
        f'<div class="meta">{meta}</div><div class="problems">{probs}</div>'
        f'<div class="input">{input_img}</div>{candidate_rows(view, layer_imgs)}{grid_table(view)}</section>'
    )


def _nav(run: str, step: int, page: int, n_pages: int, neighbours: tuple[int | None, int | None]) -> str:
    links = ['<a href="index.html">index</a>', '<a href="zero-spread.html">zero-spread groups</a>']
    prev_step, next_step = neighbours
    if page > 1:
        links.append(f'<a href="{page_name(step, page - 1)}">← page {page - 1}</a>')
    if page < n_pages:
        links.append(f'<a href="{page_name(step, page + 1)}">page {page + 1} →</a>')
    if prev_step is not None:
        links.append(f'<a href="{page_name(prev_step)}">← step {prev_step}</a>')
    if next_step is not None:
        links.append(f'<a href="{page_name(next_step)}">step {next_step} →</a>')
    return f"<nav>{''.join(links)}</nav>"


def step_page(
    run: str, step: int, page: int, n_pages: int, sections: list[str], neighbours: tuple[int | None, int | None]
) -> str:
    title = f"rollouts of step {step}" + (f" (page {page} of {n_pages})" if n_pages > 1 else "")
    body = (
        f"<h1>{html.escape(title)}</h1><div class='meta'>{html.escape(run)} · sampled after {step} optimizer steps"
        "</div>"
        f"{_nav(run, step, page, n_pages, neighbours)}"
        "<p class='note'>Layers back to front on a checkerboard. Criteria: the judge's stage-1 scores divided "
        "by reward.scale (0–1; a fallback candidate shows the group mean); stage 1: their weighted mean; stage 2: "
        "the grid score / scale, averaged over grid requests; reward: the stages mixed by reward.stageWeight, "
        "minus penalties; advantage: (reward − group mean) / (group std + 1e-4), clipped.</p>"
        '<input type="checkbox" id="zero-only"><label class="filter" for="zero-only"> only groups with zero '
        "spread</label>"
        f"<div class='groups'>{''.join(sections) or '<p>(no groups)</p>'}</div>"
        f"{_nav(run, step, page, n_pages, neighbours)}"
    )
    return _page(f"Stable-Layers {title}", body)


def zero_page(run: str, groups: list[tuple[GroupView, str]]) -> str:
    rows = "".join(
        f"<tr><td>{v.step}</td><td class='l'><a href=\"{page}#g-{html.escape(v.base.rsplit('/', 1)[-1])}\">"
        f"{html.escape(v.image_id)}</a></td><td>{_f(v.candidates[0].get('reward') if v.candidates else None)}</td>"
        f"<td>{len(v.candidates)}</td><td class='l'>{html.escape('; '.join(v.problems)) or '–'}</td></tr>"
        for v, page in groups
    )
    table = (
        "<table><tr><th>step</th><th class='l'>group</th><th>reward (all candidates)</th><th>candidates</th>"
        f"<th class='l'>judge problems</th></tr>{rows}</table>"
        if groups
        else "<p>No recorded group has zero spread.</p>"
    )
    body = (
        "<h1>Groups with zero reward spread</h1>"
        f"<div class='meta'>{html.escape(run)} · every candidate got the same reward, so the group's "
        'advantages are 0 and it contributes no gradient</div><nav><a href="index.html">index</a></nav>'
        f"{table}"
    )
    return _page("Stable-Layers zero-spread groups", body)


def index_page(run: str, summaries: list[StepSummary], plot_png: bytes | None, steps: str | None) -> str:
    rows = []
    for s in summaries:
        cls = "step haszero" if s.zero_spread else "step"
        rows.append(
            f"<tr class='{cls}'><td><a href=\"{page_name(s.step)}\">{s.step}</a></td><td>{s.groups}</td>"
            f"<td>{s.zero_spread}</td><td>{_f(s.reward_mean)}</td><td>{_f(s.spread['reward'])}</td>"
            f"<td>{_f(s.spread['1'])}</td><td>{_f(s.spread['2'])}</td><td>{s.problems}</td></tr>"
        )
    plot = (
        f"<div class='plot'><img src='data:image/png;base64,{base64.b64encode(plot_png).decode('ascii')}' "
        "alt='within-group spread per stage over steps'></div>"
        if plot_png
        else ""
    )
    n_groups = sum(s.groups for s in summaries)
    n_zero = sum(s.zero_spread for s in summaries)
    selection = f" · steps {html.escape(steps)}" if steps else ""
    body = (
        f"<h1>Rollouts of {html.escape(run)}</h1>"
        f"<div class='meta'>{len(summaries)} steps · {n_groups} recorded groups · {n_zero} with zero spread"
        f'{selection}</div><nav><a href="zero-spread.html">zero-spread groups</a></nav>'
        "<h2>Within-group spread over training</h2>"
        "<p class='note'>GRPO learns from the spread of rewards inside a group: a group whose candidates "
        "score alike has zero advantage. Stage 1 is the per-candidate rubric, stage 2 the grid "
        "calibration; the reward is their mix minus penalties.</p>"
        f"{plot}<h2>Steps</h2>"
        '<input type="checkbox" id="zero-only"><label class="filter" for="zero-only"> only steps with '
        "zero-spread groups</label>"
        "<table><tr><th>step</th><th>groups</th><th>zero spread</th><th>reward mean</th>"
        "<th>std reward</th><th>std stage 1</th><th>std stage 2</th><th>judge problems</th></tr>"
        f"{''.join(rows)}</table>"
    )
    return _page(f"Stable-Layers rollouts — {run}", body)
