"""Opening a run URI: a plain path, file:// or s3:// (the S3 backend is imported only for s3://)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stable_layers.storage.base import CHECKPOINTS, STEP_RE, StorageError, Store
from stable_layers.storage.local import LocalStore


def open_store(uri: str | Path, **s3_options: Any) -> Store:
    """Open `file:///dir`, a plain path, or `s3://bucket/prefix`.

    S3 uses boto3's usual configuration: credentials from `AWS_ACCESS_KEY_ID` /
    `AWS_SECRET_ACCESS_KEY` (or any boto3 source), the endpoint of an S3-compatible store from
    `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`). `s3_options` go to `S3Store` (attempts, backoff,
    multipart sizes). Opening does no I/O; call `store.check()` to fail early.
    """
    text = str(uri)
    if text.startswith("s3://"):
        from stable_layers.storage.s3 import S3Store

        return S3Store.from_uri(text, **s3_options)
    if text.startswith("file://"):
        path = text.removeprefix("file://")
        if path and not path.startswith("/"):
            raise StorageError(f"{text}: file:// URIs need an absolute path (file:///abs/dir); or pass a plain path")
        return LocalStore(path or "/")
    if "://" in text:
        raise StorageError(f"{text}: unsupported URI scheme; use s3://bucket/prefix, file:///abs/dir or a plain path")
    return LocalStore(text)


def split_step_uri(uri: str, section: str = CHECKPOINTS) -> tuple[Store, int]:
    """`<run>/checkpoints/step-NNNNNN` → (store of `<run>`, NNNNNN). Used by eval's --checkpoint."""
    text = str(uri).rstrip("/")
    head, _, last = text.rpartition("/")
    parent, _, sec = head.rpartition("/")
    m = STEP_RE.match(last)
    if not m or sec != section or not parent:
        raise StorageError(
            f"{uri}: expected a URI ending in /{section}/step-NNNNNN (e.g. s3://bucket/run/{section}/step-000050)"
        )
    return open_store(parent), int(m.group(1))
