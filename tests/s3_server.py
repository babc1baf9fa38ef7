"""A real HTTP S3 endpoint for tests: moto's server on 127.0.0.1 (shared/docs/infra.md §C).

Import the fixtures into a test module (`from s3_server import moto_endpoint, s3_env  # noqa: F401`).
`moto_endpoint` is session-scoped (one server per test session, stopped by its finalizer);
`s3_env` resets moto's state, points boto3 at the server through the environment (exactly how the
trainer pod is configured) and creates the bucket `test-bucket`.
"""

from __future__ import annotations

import functools
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

BUCKET = "test-bucket"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset_moto(endpoint: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    reset_moto(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    raw_client(moto_endpoint).create_bucket(Bucket=BUCKET)
    yield moto_endpoint


@functools.cache
def raw_client(endpoint: str) -> Any:
    """A plain boto3 client of the moto server (for checks behind the store's back)."""
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )
