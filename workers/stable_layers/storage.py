"""One storage interface for run data under `file://`, plain paths and `s3://` URIs.

Layout under a run URI (docs/internals.md "Storage")::

    checkpoints/step-NNNNNN/...      one checkpoint; COMMITTED (a JSON manifest) is written last
    rollouts/step-NNNNNN/<group>/... sampled rollout records
    progress.json                    replaced atomically; what the operator reads
    eval/step-NNNNNN/report.*        evaluation reports

Checkpoint protocol: every file of a checkpoint is uploaded first, then `COMMITTED` — a manifest
with the sha256 and size of every file — is created write-once (`O_EXCL`/hard link locally, a
conditional `PutObject` with `If-None-Match: *` on S3). A checkpoint without `COMMITTED` does not
exist as far as resume, eval and retention are concerned, so a crash mid-upload never leaves a
half checkpoint that could be loaded. Downloads are verified against the manifest.

This module never imports torch or diffusers: the operator image uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

CHECKPOINTS = "checkpoints"
ROLLOUTS = "rollouts"
EVAL = "eval"
PROGRESS = "progress.json"
COMMITTED = "COMMITTED"
MANIFEST_FORMAT = 1
_STEP_RE = re.compile(r"^step-(\d{6,})$")
_TMP_PREFIX = ".tmp-"


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


# ---------------------------------------------------------------- local filesystem


class LocalStore:
    """A directory. Writes go to a temporary name in the same directory, then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if ".." in Path(key).parts:
            raise StorageError(f"{self.uri}: key {key!r} escapes the store root")
        return self.root / key if key else self.root

    def url(self, key: str = "") -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StorageError(f"{self.uri}: directory is not writable ({err})") from None

    def _tmp_write(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        target = self._path(key)
        try:
            tmp = self._tmp_write(target, data)
            try:
                if if_absent:
                    # link() fails if the target exists, and the target appears complete: the
                    # write-once analogue of S3's If-None-Match without a window of partial content.
                    os.link(tmp, target)
                else:
                    os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        except FileExistsError:
            raise AlreadyExistsError(f"{self.url(key)} already exists and is write-once") from None
        except OSError as err:
            raise StorageError(f"cannot write {self.url(key)}: {err}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.url(key)} does not exist") from None
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err}") from None

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except OSError as err:
            raise StorageError(f"cannot copy {path} to {self.url(key)}: {err}") from None

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"{self.url(key)} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(_TMP_PREFIX)
        ]
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            p = self._path(key)
            p.unlink(missing_ok=True)
            parents.add(p.parent)
        # Remove directories left empty, deepest first, never the root.
        for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
            while d != self.root and d.is_relative_to(self.root):
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent


# ---------------------------------------------------------------- opening URIs


def open_store(uri: str | Path, **s3_options: Any) -> Store:
    """Open `file:///dir`, a plain path, or `s3://bucket/prefix`.

    S3 uses boto3's usual configuration: credentials from `AWS_ACCESS_KEY_ID` /
    `AWS_SECRET_ACCESS_KEY` (or any boto3 source), the endpoint of an S3-compatible store from
    `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`). `s3_options` go to `S3Store` (attempts, backoff,
    multipart sizes). Opening does no I/O; call `store.check()` to fail early.
    """
    text = str(uri)
    if text.startswith("s3://"):
        from stable_layers.storage_s3 import S3Store

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
    m = _STEP_RE.match(last)
    if not m or sec != section or not parent:
        raise StorageError(
            f"{uri}: expected a URI ending in /{section}/step-NNNNNN (e.g. s3://bucket/run/{section}/step-000050)"
        )
    return open_store(parent), int(m.group(1))


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_key(step: int, name: str = "") -> str:
    key = f"{CHECKPOINTS}/{step_name(step)}"
    return f"{key}/{name}" if name else key


# ---------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_files(local_dir: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and p.name != COMMITTED and not p.name.startswith(_TMP_PREFIX):
            yield p.relative_to(local_dir).as_posix(), p


def build_manifest(step: int, local_dir: Path) -> dict[str, Any]:
    """The COMMITTED manifest of a local checkpoint directory: sha256 and size of every file."""
    files = {rel: {"sha256": _sha256(p), "size": p.stat().st_size} for rel, p in _local_files(local_dir)}
    if not files:
        raise StorageError(f"{local_dir}: checkpoint directory is empty; nothing to commit")
    return {"format": MANIFEST_FORMAT, "step": step, "files": files, "createdAt": now_rfc3339()}


def commit_checkpoint(store: Store, step: int, local_dir: str | Path) -> str:
    """Upload every file of `local_dir` to `checkpoints/step-NNNNNN/`, then COMMITTED last.

    A leftover partial upload of the same step (a crashed earlier attempt) is removed first so the
    checkpoint holds exactly the manifest's files. Committing a step that is already committed
    raises `AlreadyExistsError` (checkpoints are immutable). Returns the checkpoint's URI.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"{local_dir}: checkpoint directory does not exist")
    marker = checkpoint_key(step, COMMITTED)
    if store.exists(marker):
        raise AlreadyExistsError(f"{store.url(checkpoint_key(step))} is already committed; checkpoints are write-once")
    manifest = build_manifest(step, local_dir)
    # A local run may write its checkpoint in place (DIR/checkpoints/step-N): then only the marker
    # is missing, and "cleaning a stale upload" would delete the checkpoint itself.
    in_place = store.url(checkpoint_key(step)) == local_dir.resolve().as_uri()
    if not in_place:
        stale = store.list(checkpoint_key(step) + "/")
        if stale:
            store.delete(stale)
        for rel, path in _local_files(local_dir):
            store.put_file(checkpoint_key(step, rel), path)
    store.put_bytes(marker, json.dumps(manifest, indent=1, sort_keys=True).encode(), if_absent=True)
    return store.url(checkpoint_key(step))


def _steps(keys: list[str]) -> dict[int, bool]:
    """step → committed?, from keys under checkpoints/."""
    out: dict[int, bool] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != CHECKPOINTS:
            continue
        m = _STEP_RE.match(parts[1])
        if m:
            step = int(m.group(1))
            out[step] = out.get(step, False) or (len(parts) == 3 and parts[2] == COMMITTED)
    return out


def list_checkpoints(store: Store) -> dict[int, bool]:
    """Every checkpoint directory under the store: step → whether it is committed."""
    return dict(sorted(_steps(store.list(CHECKPOINTS + "/")).items()))


def committed_steps(store: Store) -> list[int]:
    return [s for s, ok in list_checkpoints(store).items() if ok]


def latest_committed(store: Store) -> int | None:
    """The newest committed step, or None. Uncommitted (partial) checkpoints are ignored."""
    steps = committed_steps(store)
    return steps[-1] if steps else None


def read_manifest(store: Store, step: int) -> dict[str, Any]:
    key = checkpoint_key(step, COMMITTED)
    try:
        manifest = json.loads(store.get_bytes(key))
    except NotFoundError:
        raise NotFoundError(
            f"{store.url(checkpoint_key(step))} is not a committed checkpoint (no COMMITTED marker); "
            f"committed steps: {committed_steps(store) or 'none'}"
        ) from None
    except json.JSONDecodeError as err:
        raise StorageError(f"{store.url(key)}: manifest is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise StorageError(f"{store.url(key)}: manifest has no 'files' mapping")
    return manifest


def fetch_checkpoint(store: Store, step: int, local_dir: str | Path) -> dict[str, Any]:
    """Download a committed checkpoint into `local_dir`, verifying every file's size and sha256.

    Raises `NotFoundError` for an uncommitted step and `ChecksumError` (naming the file's URI) for a
    corrupted one; a file that fails verification is not left in `local_dir`. Returns the manifest.
    """
    manifest = read_manifest(store, step)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for rel, meta in sorted(manifest["files"].items()):
        target = local_dir / rel
        key = checkpoint_key(step, rel)
        try:
            store.get_file(key, target)
        except NotFoundError:
            raise ChecksumError(
                f"{store.url(key)} is listed in the COMMITTED manifest but missing from the store"
            ) from None
        size, digest = target.stat().st_size, _sha256(target)
        if size != meta["size"] or digest != meta["sha256"]:
            target.unlink(missing_ok=True)
            raise ChecksumError(
                f"{store.url(key)} is corrupted: got {size} bytes sha256 {digest[:12]}…, the manifest says "
                f"{meta['size']} bytes sha256 {meta['sha256'][:12]}…; use another checkpoint"
            )
    return manifest


def apply_retention(store: Store, keep: int) -> list[int]:
    """Keep the newest `keep` committed checkpoints (at least one); delete older ones and any
    uncommitted directory older than the newest committed checkpoint (dead crashed uploads).

    Uncommitted directories newer than the newest committed one may be uploads in progress and are
    left alone. A checkpoint is un-committed (marker deleted) before its files, so a retention pass
    cut short never leaves something that looks committed but is incomplete. Returns deleted steps.
    """
    ckpts = list_checkpoints(store)
    committed = [s for s, ok in ckpts.items() if ok]
    if not committed:
        return []
    keep_steps = set(committed[-max(1, keep) :])
    newest = committed[-1]
    doomed = [s for s, ok in ckpts.items() if s not in keep_steps and (ok or s < newest)]
    for step in doomed:
        if ckpts[step]:
            store.delete([checkpoint_key(step, COMMITTED)])
        store.delete(store.list(checkpoint_key(step) + "/"))
    return doomed


# ---------------------------------------------------------------- progress


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_progress(store: Store, record: dict[str, Any]) -> None:
    """Replace `progress.json` atomically; `updatedAt` is filled in when absent."""
    body = {**record}
    body.setdefault("updatedAt", now_rfc3339())
    store.put_bytes(PROGRESS, json.dumps(body, indent=1, sort_keys=True).encode())


def read_progress(store: Store) -> dict[str, Any] | None:
    """The last progress record, or None if the run has not written one yet."""
    try:
        data = json.loads(store.get_bytes(PROGRESS))
    except NotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise StorageError(f"{store.url(PROGRESS)}: not valid JSON ({err})") from None
    return data if isinstance(data, dict) else None
