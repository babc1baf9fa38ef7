"""The operator's own Prometheus metrics (training metrics come from the trainer pods)."""

from __future__ import annotations

import threading
import typing

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stable_layers_operator.resource import StableLayersRunStatus

PHASES: tuple[str, ...] = typing.get_args(typing.get_args(StableLayersRunStatus.model_fields["phase"].annotation)[0])
"""Every phase the status can hold (its Literal), so each gauge label exists from the start and
drops back to 0 when its last run leaves it."""


class OperatorMetrics:
    """Runs by phase, reconcile errors and reconcile latency, on their own registry (so tests and
    several operator instances in one process never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.runs = Gauge("stablelayers_operator_runs", "StableLayersRuns by phase", ["phase"], registry=self.registry)
        self.errors = Counter(
            "stablelayers_operator_reconcile_errors",
            "Reconcile passes that raised, by exception type",
            ["error"],
            registry=self.registry,
        )
        self.status_errors = Counter(
            "stablelayers_operator_status_write_errors",
            "Status writes the API server refused, by HTTP status",
            ["code"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "stablelayers_operator_reconcile_seconds",
            "Wall time of one reconcile pass",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.runs.labels(phase).set(0)

    def observe_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
            counts = dict.fromkeys(PHASES, 0)
            for p in self._phases.values():
                counts[p] = counts.get(p, 0) + 1
        for phase, count in counts.items():
            self.runs.labels(phase).set(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
