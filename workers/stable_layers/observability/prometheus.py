"""Prometheus exporter of the trainer: a training callback serving `/metrics` (prometheus-client).

`PrometheusCallback(run, namespace, port)` is put in the trainer's `callbacks` list on rank 0
(docs/internals.md "Trainer callbacks"). It maps the metrics.jsonl step record and each group's
`GroupScore` to the stable metric names of docs/metrics.md; every series carries the labels `run`
and `namespace`. A dedicated `CollectorRegistry` per callback keeps several exporters (tests, or a
process that trains twice) from colliding in the global registry.

No torch here: the values arrive as plain floats.
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from stable_layers.spec import CRITERIA

if TYPE_CHECKING:
    from stable_layers.reward import Group, GroupScore
    from stable_layers.spec import RunSpec

log = logging.getLogger("stable_layers.observability.prometheus")
PREFIX = "stable_layers"
DEFAULT_GROUP_STD_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
JUDGE_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
UPLOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
JUDGE_OUTCOMES = ("ok", "parse_error", "error")
"""Outcomes of a judge request (they partition `requests`); pre-created at 0 so `rate()` has a
series before the first failure."""
JUDGE_RETRY_KINDS = {"retries": "transport", "reasks": "reask"}
"""Extra attempts: transport retries inside the backend, re-asks after an unparsable answer."""
REWARD_FALLBACKS = {"stage1_fallbacks": "stage1", "stage2_failed": "stage2"}
"""Candidates whose stage-1 answer was unusable / groups whose grid (stage 2) failed."""

# `GroupScore.stats` keys of the VLM reward (reward/vlm.py): requests_<outcome> per outcome.
_REQUESTS_KEY = re.compile(r"^requests_([a-z0-9_]+)$")


def judge_outcomes(stats: Mapping[str, float]) -> dict[str, float]:
    """Request counts by outcome found in one group's `stats` (`requests_ok` → ok, ...)."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        m = _REQUESTS_KEY.match(key)
        if m and _finite(value) and value > 0:
            out[m.group(1)] = float(value)
    return out


def group_summary(score: GroupScore) -> dict[str, Any]:
    """Within-group spread per stage, the reward's std and per-criterion means of one group.

    Prefers the scorer's own `stats` (stage1_std, stage2_std, reward_std, criterion_mean.<c>) and
    computes what is missing from the candidate scores, with the population std like the reward.
    """
    stats = score.stats
    rewards = [float(r) for r in score.rewards]
    reward_std = stats.get("reward_std")
    if reward_std is None:
        reward_std = statistics.pstdev(rewards) if rewards else 0.0
    stages: dict[str, float] = {}
    for stage in ("1", "2"):
        value = stats.get(f"stage{stage}_std")
        if value is None:
            vals = [s.stages[stage] for s in score.scores if stage in s.stages]
            value = statistics.pstdev(vals) if vals else None
        if value is not None:
            stages[stage] = float(value)
    criteria: dict[str, float] = {}
    for c in CRITERIA:
        value = stats.get(f"criterion_mean.{c}")
        if value is None:
            vals = [s.criteria[c] for s in score.scores if c in s.criteria]
            value = statistics.fmean(vals) if vals else None
        if value is not None:
            criteria[c] = float(value)
    seconds = stats.get("score_seconds")
    return {"reward_std": float(reward_std), "stages": stages, "criteria": criteria, "score_seconds": seconds}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.fmean(vals) if vals else None


class PrometheusCallback:
    """Trainer callback exporting the run's metrics on `http://addr:port/metrics`.

    `port=None` serves nothing (read `exposition()` instead); `port=0` picks a free port, then
    `self.port` holds it. Gauges fed by groups (stage spread, criteria) show the mean over the
    groups scored since the previous optimizer step, so one value per iteration, not per group.
    """

    def __init__(
        self,
        run: str,
        namespace: str = "default",
        port: int | None = 9400,
        *,
        addr: str = "0.0.0.0",
        group_std_buckets: Iterable[float] = DEFAULT_GROUP_STD_BUCKETS,
        registry: CollectorRegistry | None = None,
        linger_seconds: float = 0.0,
    ):
        self.run, self.namespace = run, namespace
        self.linger_seconds = linger_seconds
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self._pending: list[dict[str, Any]] = []
        labels = ["run", "namespace"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, [*labels, *extra], registry=self.registry)

        self.reward_mean = gauge("reward_mean", "Mean reward of the step's candidates")
        self.reward_std = gauge("reward_std", "Std of the step's rewards over all candidates")
        self.group_reward_std = Histogram(
            f"{PREFIX}_group_reward_std",
            "Within-group std of the reward, one observation per scored group",
            labels,
            buckets=sorted(group_std_buckets),
            registry=self.registry,
        )
        self.zero_std_ratio = gauge("zero_std_group_ratio", "Share of the step's groups with zero reward spread")
        self.stage_std = gauge("stage_group_std", "Mean within-group std of one reward stage", ("stage",))
        self.criterion = gauge("criterion_score", "Mean score of one rubric criterion", ("criterion",))
        self.loss = gauge("loss", "Policy loss of the optimizer step")
        self.kl = gauge("kl", "KL to the reference policy (0 when klBeta is 0)")
        self.approx_kl = gauge("approx_kl", "Approximate KL between the rollout and the updated policy")
        self.clipfrac = gauge("clipfrac", "Share of ratios outside the clip range")
        self.step = gauge("step", "Optimizer steps completed")
        self.step_seconds = gauge("step_seconds", "Wall seconds of the last optimizer step")
        self.samples_per_second = gauge("samples_per_second", "Training throughput of the last step")
        self.running = gauge("running", "1 while the trainer runs, 0 after it ended")
        self.last_step_time = gauge(
            "last_step_timestamp_seconds", "Unix time of the last optimizer step (of the start before the first)"
        )
        self.judge_requests = Counter(
            f"{PREFIX}_judge_requests", "Reward judge requests by outcome", [*labels, "outcome"], registry=self.registry
        )
        self.judge_retries = Counter(
            f"{PREFIX}_judge_retries", "Extra judge attempts by kind", [*labels, "kind"], registry=self.registry
        )
        self.fallbacks = Counter(
            f"{PREFIX}_reward_fallbacks",
            "Reward fallbacks: stage1 = candidates without a usable rubric answer, stage2 = groups without a grid",
            [*labels, "stage"],
            registry=self.registry,
        )
        self.judge_latency = Histogram(
            f"{PREFIX}_judge_latency_seconds",
            "Seconds of one judge request",
            labels,
            buckets=JUDGE_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.score_seconds = Histogram(
            f"{PREFIX}_group_score_seconds",
            "Seconds to score one group (all its judge requests, or the pixel reward)",
            labels,
            buckets=JUDGE_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upload_seconds = Histogram(
            f"{PREFIX}_checkpoint_upload_seconds",
            "Seconds to upload and commit one checkpoint",
            labels,
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )
        self.last_checkpoint = gauge("last_checkpoint_step", "Step of the newest committed checkpoint")
        for outcome in JUDGE_OUTCOMES:
            self.judge_requests.labels(run, namespace, outcome)
        for kind in JUDGE_RETRY_KINDS.values():
            self.judge_retries.labels(run, namespace, kind)
        for stage in REWARD_FALLBACKS.values():
            self.fallbacks.labels(run, namespace, stage)
        # Histograms and counters start at 0 so their series exist from the first scrape; gauges do
        # not (a loss of 0 before the first step would be a lie).
        for hist in (self.group_reward_std, self.judge_latency, self.score_seconds, self.upload_seconds):
            hist.labels(run, namespace)
        self.running.labels(run, namespace).set(1)
        # Starting the clock at construction lets "no progress" alerts fire for a run that never
        # completes its first step (stuck loading weights, a hung collective, a dead judge).
        self.last_step_time.labels(run, namespace).set(time.time())
        self.port = port
        if port is not None:
            self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
            self.port = self._server.server_port

    def _l(self, metric: Any, *extra: str) -> Any:
        return metric.labels(self.run, self.namespace, *extra)

    # ------------------------------------------------------------ trainer callbacks

    def on_group(self, step: int, group: Group, score: GroupScore, advantages: list[float]) -> None:
        summary = group_summary(score)
        self._pending.append(summary)
        self._l(self.group_reward_std).observe(summary["reward_std"])
        if _finite(summary["score_seconds"]) and summary["score_seconds"] >= 0:
            self._l(self.score_seconds).observe(summary["score_seconds"])
        for seconds in getattr(score, "latencies", None) or []:
            if _finite(seconds) and seconds >= 0:
                self._l(self.judge_latency).observe(seconds)
        for outcome, count in judge_outcomes(score.stats).items():
            self._l(self.judge_requests, outcome).inc(count)
        for key, kind in JUDGE_RETRY_KINDS.items():
            if _finite(score.stats.get(key)) and score.stats[key] > 0:
                self._l(self.judge_retries, kind).inc(score.stats[key])
        for key, stage in REWARD_FALLBACKS.items():
            if _finite(score.stats.get(key)) and score.stats[key] > 0:
                self._l(self.fallbacks, stage).inc(score.stats[key])
        self._publish_groups()

    def _publish_groups(self) -> None:
        for stage in ("1", "2"):
            value = _mean(p["stages"][stage] for p in self._pending if stage in p["stages"])
            if value is not None:
                self._l(self.stage_std, stage).set(value)
        for c in CRITERIA:
            value = _mean(p["criteria"][c] for p in self._pending if c in p["criteria"])
            if value is not None:
                self._l(self.criterion, c).set(value)

    def on_step(self, record: Mapping[str, Any]) -> None:
        self._pending = []  # the next group starts the next iteration's means
        self._l(self.last_step_time).set(time.time())
        for key, metric in (
            ("reward_mean", self.reward_mean),
            ("reward_std", self.reward_std),
            ("zero_std_ratio", self.zero_std_ratio),
            ("loss", self.loss),
            ("kl", self.kl),
            ("approx_kl", self.approx_kl),
            ("clipfrac", self.clipfrac),
            ("step", self.step),
            ("step_seconds", self.step_seconds),
            ("samples_per_second", self.samples_per_second),
        ):
            value = record.get(key)
            if _finite(value):
                self._l(metric).set(float(value))

    def on_checkpoint(self, step: int, uri: str, upload_seconds: float) -> None:
        self._l(self.upload_seconds).observe(max(0.0, float(upload_seconds)))
        self._l(self.last_checkpoint).set(step)

    def on_end(self, record: Mapping[str, Any]) -> None:
        if record:
            self.on_step(record)
        self._l(self.running).set(0)
        if self._server is not None and self.linger_seconds > 0:
            # A finished Job's pod vanishes with its endpoint: without this the last step is
            # usually never scraped and dashboards end one interval early.
            log.info("serving final metrics for %.0f s (metrics.lingerSeconds)", self.linger_seconds)
            time.sleep(self.linger_seconds)

    # ------------------------------------------------------------ plumbing

    def exposition(self) -> str:
        """The text exposition format, as served on `/metrics`."""
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        """Stop the HTTP server (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> PrometheusCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exporter_from_spec(
    spec: RunSpec, port: int | None = None, namespace: str | None = None
) -> PrometheusCallback | None:
    """The exporter for a run: `port` (the CLI's --metrics-port) overrides `spec.metrics.port`; none
    of both = no exporter. The namespace label defaults to `POD_NAMESPACE` (downward API), else
    `default`."""
    port = spec.metrics.port if port is None else port
    if port is None:
        return None
    return PrometheusCallback(
        spec.name,
        namespace or os.environ.get("POD_NAMESPACE") or "default",
        port,
        addr=spec.metrics.addr,
        group_std_buckets=spec.metrics.group_std_buckets,
        linger_seconds=spec.metrics.linger_seconds,
    )
