"""The checkpoint commit protocol, retention and the progress record.

Every file of a checkpoint is uploaded first, then `COMMITTED` — a manifest with the sha256 and
size of every file — is created write-once (`O_EXCL`/hard link locally, a conditional `PutObject`
with `If-None-Match: *` on S3). A checkpoint without `COMMITTED` does not exist as far as resume,
eval and retention are concerned, so a crash mid-upload never leaves a half checkpoint that could be
loaded. Downloads are verified against the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stable_layers.storage.base import (
    CHECKPOINTS,
    COMMITTED,
    MANIFEST_FORMAT,
    PROGRESS,
    STEP_RE,
    TMP_PREFIX,
    AlreadyExistsError,
    ChecksumError,
    NotFoundError,
    StorageError,
    Store,
    checkpoint_key,
    now_rfc3339,
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_files(local_dir: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and p.name != COMMITTED and not p.name.startswith(TMP_PREFIX):
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
        m = STEP_RE.match(parts[1])
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
