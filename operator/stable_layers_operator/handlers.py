"""kopf handlers: the only module that talks to kopf. Every event and a poller run the same pass.

Level-based: the create/update/resume handlers make the operator react at once to a new run or a
spec change; a poller (one asyncio task, every run every `interval` ± jitter) follows what kopf
cannot watch (progress.json in S3). Children and pods are kept from watch events, so a pass makes
no GETs for them. Passes of one run are serialised by a per-run lock, and every pass starts from
the status the previous pass computed (the operator is the status' only writer), so a stale event
body can never roll the run back.

The pass's status is written here, not handed to kopf: kopf ends a timer for good when applying
its patch fails, and one refused status (a NaN, an over-long message) would stop the run's
reconciliation until the operator restarts. A refused write is logged, counted and retried on the
next poll; a permanently refused one is replaced by a minimal status naming the refusal. The
poller is not a kopf timer for a second reason: timers make kopf put a finalizer on every run, so
a run could not be deleted (and its GPU Jobs kept running) while the operator is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from stable_layers.storage import StorageError
from stable_layers_operator import progress as pr
from stable_layers_operator import status as stw
from stable_layers_operator.children import RUN_LABEL
from stable_layers_operator.kube import ApiError, Cluster, KubeCluster, api_client_from_environment
from stable_layers_operator.metrics import OperatorMetrics
from stable_layers_operator.observed import ObservedCluster, slim
from stable_layers_operator.reconcile import Outcome, Reconciler
from stable_layers_operator.resource import GROUP, PLURAL, VERSION, parse_run

log = logging.getLogger(__name__)
ANNOTATION_PREFIX = "stablelayers.io"
MANAGED = "app.kubernetes.io/managed-by=stable-layers-operator"
CHILD_RESOURCES = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("batch", "v1", "jobs"),
    ("", "v1", "pods"),
)
KINDS = {"configmaps": "ConfigMap", "services": "Service", "deployments": "Deployment", "jobs": "Job", "pods": "Pod"}


@dataclass
class OperatorConfig:
    interval: float = 10.0
    """Seconds between polls of one run (progress, children)."""
    wait_delay: float = 10.0
    """Kept for callers of earlier versions; waiting is reported in status, polled at `interval`."""
    jitter: float = 0.1
    """Each run's next poll is `interval × (1 ± jitter)`: runs created together spread out."""
    delete_retries: int = 5
    """Attempts of the S3 data deletion on run deletion before the run is released anyway."""
    delete_backoff: float = 10.0
    cluster_factory: Callable[[], Cluster] = field(default=lambda: KubeCluster(api_client_from_environment()))
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    open_store: Callable[..., Any] = pr.open_run_store
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def _plain(body: Any) -> dict[str, Any]:
    return {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec", "status") if body.get(k) is not None}


status_patch = stw.patch  # the name earlier callers import


def next_interval(config: OperatorConfig) -> float:
    """Seconds to a run's next poll: runs created together (a burst, an operator restart) spread
    over the interval instead of polling in lockstep."""
    return config.interval * random.uniform(1 - config.jitter, 1 + config.jitter)


def _key(meta: Any) -> tuple[str, str]:
    return (meta.get("namespace") or "default", meta["name"])


def _latest(memo: kopf.Memo, key: tuple[str, str]) -> dict[str, Any] | None:
    """The run's body as last seen by the watch (None once deleted)."""
    values = list((memo.indexes.get("runs_index") or {}).get(key, ()))
    return values[-1] if values else None


def _observed(memo: kopf.Memo, key: tuple[str, str]) -> ObservedCluster:
    """The pass' view of the run's children and pods, copied from the indexes (the pass runs in a
    thread; the indexes change on the event loop)."""
    children: dict[tuple[str, str], Any] = {}
    pods: list[Any] = []
    for _, _, plural in CHILD_RESOURCES:
        index = memo.indexes.get(f"{plural}_index") or {}
        for obj in list(index.get(key, ())):
            if plural == "pods":
                pods.append(obj)
            else:
                children[(obj["kind"], obj["metadata"]["name"])] = obj
    return ObservedCluster(memo.cluster, children, pods)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    """Register all handlers on `registry` (tests and `main` each pass their own)."""
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
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
        # The server ends a watch after server_timeout; the client gives up a little later, so a
        # half-open connection (no FIN, no data) is noticed and the watch re-established.
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 60
        # Only the operator's own children and their pods are streamed, never every pod.
        settings.watching.label_selectors[lambda r: (r.group, r.version, r.plural) in CHILD_RESOURCES] = MANAGED
        if "cluster" not in memo:
            memo.cluster = config.cluster_factory()
        memo.statuses = {}
        memo.written = {}
        memo.locks = {}
        memo.indexes = {}
        memo.due = {}
        memo.tasks = set()
        memo.poller = asyncio.create_task(poll_forever(memo, logger))

    @kopf.on.cleanup(registry=registry)
    async def stop_poller(memo: kopf.Memo, **_: Any) -> None:
        poller = memo.get("poller")
        if poller is not None:
            poller.cancel()

    async def run_pass(body: Any, memo: kopf.Memo, logger: Any) -> None:
        meta = body["metadata"]
        key = _key(meta)
        lock = memo.locks.setdefault(key, asyncio.Lock())
        async with lock:
            memo.due[key] = asyncio.get_running_loop().time() + _next_interval()
            plain = _plain(_latest(memo, key) or body)
            current = dict(plain.get("status") or {})
            # The operator is the status' only writer: its own last result is never older than the
            # body of an event (which may predate the previous pass' write).
            uid, known = memo.statuses.get(key, (None, None))
            start = known if known is not None and uid == meta.get("uid") else current
            observed = _observed(memo, key)
            started = time.perf_counter()
            try:
                outcome: Outcome = await asyncio.to_thread(
                    Reconciler(
                        plain,
                        observed,
                        now=config.clock(),
                        status=start,
                        open_store=config.open_store,
                        poll_seconds=config.interval,
                    ).reconcile
                )
            except ApiError as err:
                # The API server is failing (or throttling): the next poll tries again.
                config.metrics.errors.labels(type(err).__name__).inc()
                logger.warning(f"reconcile interrupted by the API server: {err}")
                return
            except Exception as err:
                config.metrics.errors.labels(type(err).__name__).inc()
                logger.exception(f"reconcile failed: {err}")
                return
            finally:
                config.metrics.seconds.observe(time.perf_counter() - started)
            desired = stw.clean(outcome.status)
            memo.statuses[key] = (meta.get("uid"), desired)
            config.metrics.observe_phase(key[0], key[1], desired.get("phase"))
            for action in outcome.actions:
                logger.info(action)
            # Diff against what this operator last wrote: the watch may not have delivered it yet,
            # and re-sending it would double the writes.
            w_uid, written = memo.written.get(key, (None, None))
            base = written if written is not None and w_uid == meta.get("uid") else current
            diff = stw.patch(base, desired)
            if diff:
                log.debug("status of %s/%s: writing %s", key[0], key[1], sorted(diff))
                if await asyncio.to_thread(write_status, memo.cluster, key, diff, desired, logger):
                    memo.written[key] = (meta.get("uid"), desired)
        if outcome.delete_run:
            logger.info("ttlSecondsAfterFinished passed: deleting the run")
            try:
                await asyncio.to_thread(memo.cluster.delete_run, key[0], key[1])
            except ApiError as err:
                logger.warning(f"cannot delete the run after its TTL: {err}")

    def write_status(cluster: Cluster, key: tuple[str, str], diff: dict[str, Any], desired: Any, logger: Any) -> bool:
        """True when the whole diff was written."""
        try:
            cluster.patch_status(key[0], key[1], diff)
            return True
        except ApiError as err:
            if err.status == 404:
                return False  # the run is gone
            config.metrics.status_errors.labels(str(err.status)).inc()
            logger.warning(f"status update refused, retried at the next poll: {err}")
            if not err.permanent:
                return False
            refusal = str(err)
        except Exception as err:  # connection refused/reset, timeout: the next poll retries
            config.metrics.status_errors.labels(type(err).__name__).inc()
            logger.warning(f"status update failed, retried at the next poll: {err}")
            return False
        try:
            cluster.patch_status(key[0], key[1], stw.fallback(desired, refusal))
        except Exception as err:
            logger.warning(f"minimal status update refused too: {err}")
        return False

    def _next_interval() -> float:
        return next_interval(config)

    async def poll_forever(memo: kopf.Memo, logger: Any) -> None:
        tick = min(1.0, config.interval / 4)
        while True:
            try:
                schedule(memo)
            except Exception as err:  # never let one bad tick end every run's polling
                logger.exception(f"poller tick failed: {err}")
            await asyncio.sleep(tick)

    def schedule(memo: kopf.Memo) -> None:
        """Start a pass for every run that is due and not in a pass already."""
        now = asyncio.get_running_loop().time()
        runs = {key: _latest(memo, key) for key in list(memo.indexes.get("runs_index") or {})}
        for key in [k for k in memo.statuses if k not in runs]:  # deleted runs
            for store in (memo.statuses, memo.written, memo.locks, memo.due):
                store.pop(key, None)
            config.metrics.observe_phase(key[0], key[1], None)
        for key, body in runs.items():
            lock = memo.locks.get(key)
            if body is None or memo.due.get(key, 0.0) > now or (lock is not None and lock.locked()):
                continue
            memo.due[key] = now + _next_interval()
            task = asyncio.create_task(poll_one(body, memo))
            memo.tasks.add(task)
            task.add_done_callback(memo.tasks.discard)

    async def poll_one(body: Any, memo: kopf.Memo) -> None:
        meta = body["metadata"]
        await run_pass(body, memo, logging.LoggerAdapter(log, {"run": f"{meta.get('namespace')}/{meta['name']}"}))

    @kopf.index(*resource, registry=registry, id="runs_index")
    def runs_index(namespace: str | None, name: str, body: Any, **_: Any) -> dict[Any, Any]:
        return {(namespace or "default", name): _plain(body)}

    for group, version, plural in CHILD_RESOURCES:
        _watch_children(registry, group, version, plural)

    @kopf.on.create(*resource, registry=registry, id="reconcile-create")
    @kopf.on.resume(*resource, registry=registry, id="reconcile-resume")
    @kopf.on.update(*resource, registry=registry, id="reconcile-update", field="spec")
    async def on_change(body: Any, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
        # kopf hands its indexes only to handlers; the poller reads them from here (updated in
        # place: each run's memo is a shallow copy of the operator's).
        memo.indexes.update({k: v for k, v in kwargs.items() if k.endswith("_index")})
        await run_pass(body, memo, logger)

    def wants_data_deleted(spec: Any, **_: Any) -> bool:
        return bool(((spec or {}).get("storage") or {}).get("deleteOnRunDeletion"))

    @kopf.on.delete(
        *resource,
        registry=registry,
        id="delete-data",
        when=wants_data_deleted,
        retries=config.delete_retries,
        backoff=config.delete_backoff,
    )
    def delete_data(body: Any, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        """Only runs (and only holds a finalizer) when `storage.deleteOnRunDeletion` is true; gives
        up after `delete_retries` attempts so a run (and its namespace) never stays Terminating."""
        meta = body["metadata"]
        try:
            spec = parse_run(dict(body["spec"]))
        except ValueError as err:
            raise kopf.PermanentError(f"run data kept: invalid spec ({err})") from None
        problem = spec.storage.deletion_problem()
        if problem:
            raise kopf.PermanentError(f"run data under {spec.storage.uri} kept: {problem}")
        try:
            store = config.open_store(spec, meta.get("namespace") or "default", memo.cluster)
        except (LookupError, ValueError) as err:
            # The Secret went with its namespace: no retry brings it back.
            raise kopf.PermanentError(f"run data under {spec.storage.uri} kept: {err}") from None
        try:
            removed = pr.delete_run_data(store)
        except StorageError as err:
            raise kopf.TemporaryError(f"deleting {spec.storage.uri}: {err}", delay=config.delete_backoff) from None
        logger.info(f"deleted {removed} object(s) under {spec.storage.uri}")

    @kopf.on.probe(registry=registry, id="runs")
    def runs_known(memo: kopf.Memo, **_: Any) -> int:
        poller = memo.get("poller")
        if poller is not None and poller.done():
            # The liveness endpoint fails, so the kubelet restarts an operator that stopped polling.
            raise RuntimeError("the run poller has stopped")
        return len(memo.get("indexes", {}).get("runs_index") or {})


def _watch_children(registry: kopf.OperatorRegistry, group: str, version: str, plural: str) -> None:
    """Index the run's children (or pods) of one resource by run. kopf starts no handler before
    every index has its initial listing, so a pass never takes an existing child for a missing one."""

    @kopf.index(group, version, plural, registry=registry, id=f"{plural}_index", labels={RUN_LABEL: kopf.PRESENT})
    def seen(namespace: str | None, labels: Any, body: Any, **_: Any) -> dict[Any, Any]:
        # List items carry no kind: it comes from the resource watched.
        return {(namespace or "default", labels[RUN_LABEL]): {**slim(body), "kind": KINDS[plural]}}
