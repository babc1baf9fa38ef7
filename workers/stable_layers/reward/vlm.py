"""The two-stage VLM reward over any `JudgeBackend` (OpenAI-compatible server or in-process model).

Per group:
  stage 1  one request per candidate (panel image, rubric prompt, JSON schema), all concurrent;
  stage 2  `gridRepeats` grid requests (fresh shuffle each), concurrent with stage 1;
  reward   R_i = λ·p_i + (1−λ)·q_i − penalties_i, p_i = weighted mean of criteria / scale,
           q_i = mean over repeats of the grid score / scale, penalties from pixels (`combine.py`).

Failure policy (documented in docs/reward.md): a transport error is retried by the backend with
backoff; an answer that does not parse, or that was cut off at the token limit (finish_reason
`length`, counted as truncated and as a parse error), is re-asked once with a note naming the
problem. A
candidate whose stage-1 answer is still unusable gets the judge part of the reward set to the mean
of the candidates that were scored, so its GRPO advantage is ≈ 0 (deterministic penalties still
apply). If no grid answer is usable the group falls back to stage 1 alone (λ = 1); if no stage-1
answer is usable either, every candidate gets the same reward (zero advantage for the group).
Everything is counted in `GroupScore.stats` and no single bad answer raises.

Stats keys added here (besides `combine.group_stats`): requests, requests_ok,
requests_parse_error, requests_truncated, requests_error, reasks, retries, stage1_fallbacks, stage2_failed,
latency_seconds_mean, latency_seconds_max, score_seconds. Per-request latencies are in
`GroupScore.latencies` (for a histogram).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from stable_layers.reward.base import (
    CandidateScore,
    Group,
    GroupScore,
    JudgeUnavailable,
    PixelMeasures,
)
from stable_layers.reward.combine import apply_penalties, combine_stages, group_stats, weighted_mean
from stable_layers.reward.panels import render_grid, render_panel, shuffle_order
from stable_layers.reward.pixel import pixel_measures
from stable_layers.reward.prompts import (
    SYSTEM,
    ParseError,
    parse_stage1,
    parse_stage2,
    stage1_prompt,
    stage1_schema,
    stage2_prompt,
    stage2_schema,
)
from stable_layers.spec import CRITERIA, RewardSpec

T = TypeVar("T")


@dataclass
class Answer:
    text: str
    latency: float  # seconds of the successful attempt
    retries: int = 0  # transport retries spent before it
    latencies: tuple[float, ...] = ()  # every attempt, failed ones included
    finish_reason: str | None = None  # "length": the answer hit the token limit (cut off)


class JudgeBackend(Protocol):
    name: str

    async def complete(
        self, system: str, prompt: str, image: np.ndarray, schema: dict[str, Any], schema_name: str
    ) -> Answer:
        """One chat request with one image; raises `JudgeUnavailable` after retries are spent."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Counters:
    requests: int = 0
    ok: int = 0
    parse_error: int = 0
    truncated: int = 0
    error: int = 0
    reasks: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self.latencies: list[float] = []


REASK_NOTE = "\n\nYour previous answer could not be used ({error}). Reply with the JSON object only."
TRUNCATED = "it was cut off at the token limit"


class VLMScorer:
    """`RewardScorer` with a VLM judge; `backend` does the transport."""

    def __init__(self, backend: JudgeBackend, spec: RewardSpec | None = None) -> None:
        self.backend = backend
        self.spec = spec or RewardSpec()
        self.name = f"vlm-{backend.name}"
        self._queries: dict[str, int] = {}

    async def _ask(
        self,
        counters: _Counters,
        prompt: str,
        image: np.ndarray,
        schema: dict[str, Any],
        schema_name: str,
        parse: Callable[[str], T],
    ) -> tuple[T | None, list[str]]:
        """Ask, re-ask once on a parse failure; (parsed or None, raw answers)."""
        texts: list[str] = []
        note = ""
        for attempt in range(2):
            counters.requests += 1
            try:
                ans = await self.backend.complete(SYSTEM, prompt + note, image, schema, schema_name)
            except JudgeUnavailable as err:
                counters.error += 1
                counters.retries += err.retries
                counters.latencies.extend(err.latencies)
                texts.append(f"<error: {err}>")
                return None, texts  # the backend already retried; re-asking would only wait longer
            counters.retries += ans.retries
            counters.latencies.extend(ans.latencies or (ans.latency,))
            texts.append(ans.text)
            try:
                if ans.finish_reason == "length":
                    # even a prefix that happens to parse is not the answer the judge meant
                    counters.truncated += 1
                    raise ParseError(TRUNCATED)
                parsed = parse(ans.text)
            except ParseError as err:
                counters.parse_error += 1
                if attempt == 0:
                    counters.reasks += 1
                    note = REASK_NOTE.format(error=err)
                continue
            counters.ok += 1
            return parsed, texts
        return None, texts

    def _render(self, group: Group, orders: list[list[int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        cands = [c.layers for c in group.candidates]
        n_tiles = 2 + max(len(c) for c in cands)
        panels = [render_panel(group.image, c, self.spec.tile_size, n_tiles) for c in cands]
        grids = [
            render_grid(group.image, cands, o, tile=self.spec.tile_size, max_side=self.spec.grid_max_side)
            for o in orders
        ]
        return panels, grids

    def next_orders(self, group: Group) -> list[list[int]]:
        """Fresh grid permutations for this group (the query counter advances per image id)."""
        if not self.spec.grid:
            return []
        n = len(group.candidates)
        q0 = self._queries.get(group.image_id, 0)
        self._queries[group.image_id] = q0 + self.spec.grid_repeats
        return [shuffle_order(n, self.spec.shuffle_seed, group.image_id, q0 + r) for r in range(self.spec.grid_repeats)]

    async def score_group(self, group: Group) -> GroupScore:
        if not group.candidates:
            raise ValueError(f"group {group.image_id!r} has no candidates")
        t0 = time.perf_counter()
        spec = self.spec
        n = len(group.candidates)
        n_layers = max(len(c.layers) for c in group.candidates)
        orders = self.next_orders(group)
        measures, (panels, grids) = await asyncio.to_thread(
            lambda: (
                [pixel_measures(group.image, c.layers, spec.pixel) for c in group.candidates],
                self._render(group, orders),
            )
        )
        counters = _Counters()
        s1_prompt, s1_schema = stage1_prompt(n_layers, spec.scale), stage1_schema(spec.scale)
        s2_prompt, s2_schema = stage2_prompt(n, n_layers, spec.scale), stage2_schema(n, spec.scale)
        stage1 = [
            self._ask(counters, s1_prompt, p, s1_schema, "layer_rubric", lambda t: parse_stage1(t, spec.scale))
            for p in panels
        ]
        stage2 = [
            self._ask(counters, s2_prompt, g, s2_schema, "grid_scores", lambda t: parse_stage2(t, n, spec.scale))
            for g in grids
        ]
        results = await asyncio.gather(*stage1, *stage2)
        s1_results, s2_results = results[:n], results[n:]
        scores, extra = self._combine(s1_results, s2_results, orders, measures)
        stats = group_stats([s for s in scores if not s.flags.get("judge_failed")])
        stats.update(extra)
        stats.update(
            requests=counters.requests,
            requests_ok=counters.ok,
            requests_parse_error=counters.parse_error,
            requests_truncated=counters.truncated,
            requests_error=counters.error,
            reasks=counters.reasks,
            retries=counters.retries,
            latency_seconds_mean=float(np.mean(counters.latencies)) if counters.latencies else 0.0,
            latency_seconds_max=float(np.max(counters.latencies)) if counters.latencies else 0.0,
            score_seconds=time.perf_counter() - t0,
        )
        return GroupScore(group.image_id, scores, stats, latencies=list(counters.latencies))

    def _combine(
        self,
        s1_results: list[tuple[Any, list[str]]],
        s2_results: list[tuple[Any, list[str]]],
        orders: list[list[int]],
        measures: list[PixelMeasures],
    ) -> tuple[list[CandidateScore], dict[str, float]]:
        spec = self.spec
        n = len(s1_results)
        # stage 2: map each answer (by printed index) back to candidates, average over repeats
        q_sum, q_cnt = np.zeros(n), 0
        grid_raw: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for order, (scores2, texts) in zip(orders, s2_results, strict=True):
            for pos, cand in enumerate(order):
                got = None if scores2 is None else scores2[pos]
                grid_raw[cand].append({"index": pos + 1, "score": got, "answers": texts})
            if scores2 is None:
                continue
            for pos, cand in enumerate(order):
                q_sum[cand] += scores2[pos] / spec.scale
            q_cnt += 1
        q = q_sum / q_cnt if q_cnt else None

        p: list[float | None] = []
        crit: list[dict[str, float] | None] = []
        for parsed, _ in s1_results:
            if parsed is None:
                p.append(None)
                crit.append(None)
                continue
            c = {k: v / spec.scale for k, v in parsed[0].items()}
            crit.append(c)
            p.append(weighted_mean(c, spec.weights))

        ok = [i for i in range(n) if p[i] is not None]
        base: list[float | None] = []
        for i in range(n):
            if p[i] is not None:
                base.append(combine_stages(p[i], None if q is None else float(q[i]), spec.stage_weight))
            elif not ok and q is not None:
                base.append(float(q[i]))  # no rubric at all: the grid alone still ranks the group
            else:
                base.append(None)
        known = [b for b in base if b is not None]
        fill = float(np.mean(known)) if known else 0.5
        mean_crit = (
            {c: float(np.mean([crit[i][c] for i in ok])) for c in CRITERIA} if ok else dict.fromkeys(CRITERIA, 0.5)
        )

        out: list[CandidateScore] = []
        for i in range(n):
            failed = p[i] is None
            b = fill if base[i] is None else base[i]
            reward, penalties = apply_penalties(b, measures[i], spec.penalties)
            stages = {} if failed else {"1": float(p[i])}
            if q is not None:
                stages["2"] = float(q[i])
            if base[i] is not None:
                stages["judge"] = float(base[i])  # the judge's own combined score, before penalties
            flags = {
                "blank_layer": measures[i].any_blank,
                "duplicate_of_composite": measures[i].any_duplicate,
                "nothing_separated": measures[i].nothing_separated,
                "judge_failed": failed,
            }
            parsed, texts = s1_results[i]
            raw: dict[str, Any] = {"stage1_answers": texts, "pixel": measures[i].as_dict(), "penalties": penalties}
            if parsed is not None:
                raw["stage1_scores"] = parsed[0]
                raw["judge_flags"] = parsed[1]
            if grid_raw[i]:
                raw["stage2"] = grid_raw[i]
            out.append(
                CandidateScore(
                    reward=float(reward),
                    criteria=dict(mean_crit if crit[i] is None else crit[i]),
                    stages=stages,
                    flags=flags,
                    raw=raw,
                )
            )
        extra = {"stage1_fallbacks": float(n - len(ok)), "stage2_failed": float(bool(orders) and q is None)}
        return out, extra

    async def aclose(self) -> None:
        await self.backend.aclose()
