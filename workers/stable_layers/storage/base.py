"""The store interface, run-layout names and storage errors (the bottom of the storage package).

Never imports torch or diffusers: the operator image uses the storage package.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

CHECKPOINTS = "checkpoints"
ROLLOUTS = "rollouts"
EVAL = "eval"
PROGRESS = "progress.json"
COMMITTED = "COMMITTED"
MANIFEST_FORMAT = 1
STEP_RE = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"


class StorageError(RuntimeError):
    """Any storage failure; the message names the URI involved and, where known, the fix."""


class NotFoundError(StorageError):
    """The object does not exist."""


class AlreadyExistsError(StorageError):
    """A write-once object (e.g. a COMMITTED marker) already exists."""


class ChecksumError(StorageError):
    """A downloaded file does not match the sha256/size recorded in its checkpoint manifest."""


class Store(Protocol):
    """Keys are '/'-separated paths relative to the store root (the run URI)."""

    uri: str

    def url(self, key: str = "") -> str:
        """The full URI of `key` (the root when empty)."""
        ...

    def check(self) -> None:
        """Fail early with a clear error if the store cannot be used (missing bucket, bad
        credentials, unreachable endpoint, unwritable directory)."""
        ...

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write atomically (readers see the old or the new object). `if_absent`: write-once,
        raising `AlreadyExistsError` if the key exists."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read an object; `NotFoundError` if it is absent."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for large files on S3)."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Download to `path` (created atomically via a temporary name)."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix` (recursive), sorted."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Delete the keys; absent keys are ignored."""
        ...


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_key(step: int, name: str = "") -> str:
    key = f"{CHECKPOINTS}/{step_name(step)}"
    return f"{key}/{name}" if name else key


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
