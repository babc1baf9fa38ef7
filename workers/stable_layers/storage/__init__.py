"""Run data under `file://`, plain paths and `s3://` URIs: one store interface, the checkpoint
commit protocol, the progress record and rollout records.

Layout under a run URI (docs/storage.md)::

    checkpoints/step-NNNNNN/...      one checkpoint; COMMITTED (a JSON manifest) is written last
    rollouts/step-NNNNNN/<group>/... sampled rollout records
    progress.json                    replaced atomically; what the operator reads
    eval/step-NNNNNN/report.*        evaluation reports

The package never imports torch or diffusers: the slim operator image uses it. The S3 backend
(boto3) is loaded on first use (`S3Store`), so importing the package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stable_layers.storage.base import (
    CHECKPOINTS,
    COMMITTED,
    EVAL,
    MANIFEST_FORMAT,
    PROGRESS,
    ROLLOUTS,
    AlreadyExistsError,
    ChecksumError,
    NotFoundError,
    StorageError,
    Store,
    checkpoint_key,
    now_rfc3339,
    step_name,
)
from stable_layers.storage.checkpoints import (
    apply_retention,
    build_manifest,
    commit_checkpoint,
    committed_steps,
    fetch_checkpoint,
    latest_committed,
    list_checkpoints,
    read_manifest,
    read_progress,
    write_progress,
)
from stable_layers.storage.local import LocalStore
from stable_layers.storage.uri import open_store, split_step_uri

if TYPE_CHECKING:
    from stable_layers.storage.s3 import S3Store

__all__ = [
    "CHECKPOINTS",
    "COMMITTED",
    "EVAL",
    "MANIFEST_FORMAT",
    "PROGRESS",
    "ROLLOUTS",
    "AlreadyExistsError",
    "ChecksumError",
    "LocalStore",
    "NotFoundError",
    "S3Store",
    "StorageError",
    "Store",
    "apply_retention",
    "build_manifest",
    "checkpoint_key",
    "commit_checkpoint",
    "committed_steps",
    "fetch_checkpoint",
    "latest_committed",
    "list_checkpoints",
    "now_rfc3339",
    "open_store",
    "read_manifest",
    "read_progress",
    "split_step_uri",
    "step_name",
    "write_progress",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the boto3 backend loads only when asked for.
    if name == "S3Store":
        from stable_layers.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module 'stable_layers.storage' has no attribute {name!r}")
