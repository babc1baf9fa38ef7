"""Shared pieces of the kopf-against-kmock test modules: an S3 bucket on moto, the run spec they
start from, and status readers. Each module keeps its own bucket and its own operator instance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from s3_server import reset_moto

from stable_layers.storage.s3 import S3Store
from stable_layers_operator.testing import EmulatedCluster

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
    )


def fresh_bucket(endpoint: str, bucket: str) -> str:
    """An emptied moto server with `bucket` created; returns the endpoint."""
    reset_moto(endpoint)
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return endpoint


def run_store(endpoint: str, bucket: str, name: str) -> S3Store:
    return S3Store(bucket, name, client=s3_client(endpoint))


def run_spec(endpoint: str, bucket: str, name: str, *, nodes: int = 1, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "run": {"name": name, "model": {"preset": "tiny-random"}, "grpo": {"maxSteps": 8}},
        "trainer": {"nodes": nodes, "gpusPerNode": 0},
        "storage": {"uri": f"s3://{bucket}/{name}", "endpoint": endpoint, "secretRef": {"name": "s3-keys"}},
    }
    spec.update(extra)
    return spec


@contextmanager
def running_operator(**options: Any) -> Iterator[EmulatedCluster]:
    """kmock plus the real kopf operator, with the runs' S3 Secret; stopped and checked for errors."""
    emulated = EmulatedCluster(**options).start()
    emulated.create_secret("s3-keys", KEYS)
    try:
        yield emulated
    finally:
        emulated.stop()
    assert emulated.error is None


def status(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    return cluster.get_run(name).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})
