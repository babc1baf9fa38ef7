"""kopf handlers: every event and a periodic timer run the same idempotent reconcile pass.

Level-based: the create/update/resume handlers make the operator react at once to a new run or a
spec change (suspend, resume); the timer polls what kopf cannot watch (progress.json in S3) and
Job/Deployment state. Passes of one run are serialised by a per-run lock, and every pass starts
from the status the previous pass computed (the operator is the status' only writer), so a stale
event body can never roll the run back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from stable_layers_operator import progress as pr
from stable_layers_operator.kube import Cluster, KubeCluster, api_client_from_environment
from stable_layers_operator.metrics import OperatorMetrics
from stable_layers_operator.reconcile import Outcome, Reconciler
from stable_layers_operator.resource import GROUP, PLURAL, VERSION, parse_run

log = logging.getLogger(__name__)
ANNOTATION_PREFIX = "stablelayers.io"


@dataclass
class OperatorConfig:
    interval: float = 10.0
    """Seconds between polls of one run (progress, children)."""
    wait_delay: float = 10.0
    """Retry delay while waiting (judge loading)."""
    cluster_factory: Callable[[], Cluster] = field(default=lambda: KubeCluster(api_client_from_environment()))
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    open_store: Callable[..., Any] = pr.open_run_store
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def _plain(body: Any) -> dict[str, Any]:
    return {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status") if body.get(k) is not None}


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch of `status`: changed top-level keys, and None for keys to remove."""
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in desired and k != "kopf"})
    return patch


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register all handlers on `registry` (tests and `main` each pass their own)."""
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Progress and diff-base in annotations keep kopf's bookkeeping out of the public status
        # (whose schema prunes unknown fields anyway).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        # No CRD/namespace scanning: the operator serves one known resource, and RBAC stays
        # free of cluster-wide list/watch on CRDs and namespaces.
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        if "cluster" not in memo:
            memo.cluster = config.cluster_factory()
        memo.statuses = {}
        memo.locks = {}

    async def run_pass(body: Any, patch: kopf.Patch, memo: kopf.Memo, logger: Any, *, wait: bool) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        lock = memo.locks.setdefault(key, asyncio.Lock())
        async with lock:
            plain = _plain(body)
            current = dict(plain.get("status") or {})
            # The operator is the status' only writer: its own last result is never older than the
            # body of an event (which may predate the previous pass' patch).
            uid, known = memo.statuses.get(key, (None, None))
            start = known if known is not None and uid == meta.get("uid") else current
            started = time.perf_counter()
            try:
                outcome: Outcome = await asyncio.to_thread(
                    Reconciler(
                        plain,
                        memo.cluster,
                        now=config.clock(),
                        status=start,
                        open_store=config.open_store,
                        poll_seconds=config.wait_delay,
                    ).reconcile
                )
            except Exception as err:
                config.metrics.errors.labels(type(err).__name__).inc()
                raise
            finally:
                config.metrics.seconds.observe(time.perf_counter() - started)
            memo.statuses[key] = (meta.get("uid"), outcome.status)
            config.metrics.observe_phase(key[0], key[1], outcome.status.get("phase"))
            for action in outcome.actions:
                logger.info(action)
            diff = status_patch(current, outcome.status)
            if diff:
                patch.status.update(diff)
        if outcome.delete_run:
            logger.info("ttlSecondsAfterFinished passed: deleting the run")
            await asyncio.to_thread(memo.cluster.delete_run, key[0], key[1])
            return
        if wait and outcome.wait:
            raise kopf.TemporaryError(outcome.wait, delay=outcome.delay or config.wait_delay)

    @kopf.on.create(*resource, registry=registry, id="reconcile-create")
    @kopf.on.resume(*resource, registry=registry, id="reconcile-resume")
    @kopf.on.update(*resource, registry=registry, id="reconcile-update", field="spec")
    async def on_change(body: Any, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        # Never raise "wait" here: kopf would retry this handler and the timer in parallel.
        await run_pass(body, patch, memo, logger, wait=False)

    @kopf.timer(*resource, registry=registry, id="reconcile-poll", interval=config.interval)
    async def poll(body: Any, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await run_pass(body, patch, memo, logger, wait=True)

    def wants_data_deleted(spec: Any, **_: Any) -> bool:
        return bool(((spec or {}).get("storage") or {}).get("deleteOnRunDeletion"))

    @kopf.on.delete(*resource, registry=registry, id="delete-data", when=wants_data_deleted)
    def delete_data(body: Any, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        """Only runs (and only holds a finalizer) when `storage.deleteOnRunDeletion` is true."""
        meta = body["metadata"]
        spec = parse_run(dict(body["spec"]))
        store = config.open_store(spec, meta.get("namespace") or "default", memo.cluster)
        removed = pr.delete_run_data(store)
        logger.info(f"deleted {removed} object(s) under {spec.storage.uri}")

    @kopf.on.delete(*resource, registry=registry, id="forget", optional=True)
    def forget(body: Any, memo: kopf.Memo, **_: Any) -> None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        memo.statuses.pop(key, None)
        memo.locks.pop(key, None)
        config.metrics.observe_phase(key[0], key[1], None)

    @kopf.on.probe(registry=registry, id="runs")
    def runs_known(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.get("statuses", {}))
