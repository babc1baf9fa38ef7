"""Reading what the workers write to S3: progress.json, committed checkpoints, eval reports.

The operator opens each run's store with that run's own credentials (its `storage.secretRef`) and
endpoint, so runs in different buckets or accounts never share a client. Clients are cached per
(endpoint, region, credentials): building a boto3 client costs tens of milliseconds of CPU, and the
progress poll comes every few seconds per run. All clients come from one boto3 Session (a Session
per credential set costs ~1 MB and its own copy of the service model, never freed), and the cache
is bounded (least recently used out), so memory stays flat however many Secrets runs use.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from stable_layers import storage
from stable_layers.storage import Store
from stable_layers_operator.evaluation import report_key
from stable_layers_operator.kube import Cluster
from stable_layers_operator.resource import StableLayersRunSpec

MAX_CLIENTS = 64
"""S3 clients kept (one per endpoint, region and credentials); the least recently used goes first."""
_clients: OrderedDict[str, Any] = OrderedDict()
_session: Any = None
_lock = threading.Lock()


def _s3_client(endpoint: str | None, region: str, key_id: str | None, secret: str | None) -> Any:
    import boto3
    from botocore.config import Config

    global _session
    cache_key = hashlib.sha256(json.dumps([endpoint, region, key_id, secret]).encode()).hexdigest()
    with _lock:
        cached = _clients.get(cache_key)
        if cached is not None:
            _clients.move_to_end(cache_key)
            return cached
        if _session is None:
            _session = boto3.session.Session()
        config = Config(
            connect_timeout=5,
            read_timeout=15,
            # The timer polls again in seconds; fail fast instead of stalling a reconcile.
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        made = _session.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=config,
        )
        _clients[cache_key] = made
        while len(_clients) > MAX_CLIENTS:
            _clients.popitem(last=False)
        return made


def open_run_store(spec: StableLayersRunSpec, namespace: str, cluster: Cluster) -> Store:
    """The run's S3 store, authenticated with the keys of `spec.storage.secretRef` (or boto3's
    default chain, e.g. the operator's IRSA role, when there is no secretRef)."""
    from stable_layers.storage import S3Store

    key_id = secret = None
    ref = spec.storage.secret_ref
    if ref is not None:
        data = cluster.secret(namespace, ref.name)
        missing = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data]
        if missing:
            raise LookupError(f"Secret {namespace}/{ref.name} has no key(s) {missing} (spec.storage.secretRef)")
        key_id, secret = data[ref.access_key_id_key], data[ref.secret_access_key_key]
    bucket, _, prefix = spec.storage.uri.removeprefix("s3://").partition("/")
    client = _s3_client(spec.storage.endpoint, spec.storage.region, key_id, secret)
    return S3Store(bucket, prefix, client=client, attempts=1)


def read_progress(store: Store) -> dict[str, Any] | None:
    return storage.read_progress(store)


def latest_checkpoint(store: Store) -> int | None:
    return storage.latest_committed(store)


HEADLINE_METRICS = ("blank_layer_rate", "composite_duplicate_rate", "artifact_layer_rate", "recon_psnr")
"""Layer-quality numbers of `summary.models[m].metrics` copied to status (shared/docs/eval.md)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
        return float(value)
    return None


def headline(report: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of an eval report.json (stable_layers.eval.runner's format) for status.

    From the fine-tuned model's summary (the base model's when the report has only that): the
    LayerD RGB L1 and alpha soft IoU at k = 0 and at the deepest merge level (the usual headline
    pair, eval.md), and the layer-quality rates. A report carrying a flat `headline` mapping is
    taken as is."""
    if isinstance(report.get("headline"), dict):
        return {str(k): v for k, v in ((k, _number(v)) for k, v in report["headline"].items()) if v is not None}
    models = (report.get("summary") or {}).get("models") or {}
    name = "finetuned" if "finetuned" in models else next(iter(models), None)
    if name is None:
        return {}
    out: dict[str, float] = {}
    levels = models[name].get("layerd") or []
    for level in (levels[:1] + levels[-1:]) if levels else []:
        for key, label in (("rgb_l1", "rgbL1"), ("alpha_iou", "alphaIou")):
            value = _number(level.get(key))
            if value is not None:
                out[f"{label}K{level.get('k', 0)}"] = value
    metrics = models[name].get("metrics") or {}
    for key in HEADLINE_METRICS:
        value = _number(metrics.get(key))
        if value is not None:
            out[_camel(key)] = value
    return out


def read_report(store: Store, step: int) -> tuple[str, dict[str, float]] | None:
    """(URI, headline numbers) of the report of `step`, or None if not written (yet)."""
    key = report_key(step)
    try:
        data = json.loads(store.get_bytes(key))
    except storage.NotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise storage.StorageError(f"{store.url(key)}: not valid JSON ({err})") from None
    return store.url(key), headline(data) if isinstance(data, dict) else {}


def delete_run_data(store: Store) -> int:
    """Delete everything under the run's URI (only when `storage.deleteOnRunDeletion`)."""
    keys = store.list("")
    store.delete(keys)
    return len(keys)
