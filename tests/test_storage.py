"""Storage: the same behaviour through a local directory and a real HTTP S3 endpoint (moto server).

Every protocol test runs against both backends (`store` is parametrized), so the checkpoint
protocol is exercised over real HTTP with boto3 exactly as in a trainer pod.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from s3_server import BUCKET, moto_endpoint, raw_client, s3_env  # noqa: F401

from stable_layers import storage
from stable_layers.storage import (
    AlreadyExistsError,
    ChecksumError,
    NotFoundError,
    StorageError,
    apply_retention,
    commit_checkpoint,
    fetch_checkpoint,
    latest_committed,
    list_checkpoints,
    open_store,
    read_progress,
    write_progress,
)

pytestmark = pytest.mark.timeout(120)


def make_ckpt(root: Path, step: int, *, big: int = 0) -> Path:
    d = root / f"local-{step}"
    (d / "lora").mkdir(parents=True)
    (d / "lora" / "pytorch_lora_weights.safetensors").write_bytes(os.urandom(1000) + bytes([step % 256]))
    (d / "optimizer.pt").write_bytes(os.urandom(500))
    (d / "state.json").write_text(json.dumps({"step": step}))
    if big:
        (d / "big.bin").write_bytes(os.urandom(big))
    return d


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> storage.Store:
    if request.param == "local":
        return open_store(tmp_path / "run")
    request.getfixturevalue("s3_env")
    return open_store(f"s3://{BUCKET}/runs/r1", attempts=2, backoff=0.05)


def raw_s3():
    return raw_client(os.environ["AWS_ENDPOINT_URL"])


def test_bytes_roundtrip_list_exists_delete(store: storage.Store) -> None:
    store.check()
    store.put_bytes("a/x.txt", b"one")
    store.put_bytes("a/b/y.txt", b"two")
    store.put_bytes("ab.txt", b"three")
    assert store.get_bytes("a/x.txt") == b"one"
    assert store.list("a/") == ["a/b/y.txt", "a/x.txt"]
    assert store.list() == ["a/b/y.txt", "a/x.txt", "ab.txt"]
    assert store.exists("a/x.txt") and not store.exists("a/nope")
    store.put_bytes("a/x.txt", b"replaced")
    assert store.get_bytes("a/x.txt") == b"replaced"
    store.delete(["a/x.txt", "a/missing"])
    assert store.list("a/") == ["a/b/y.txt"]
    with pytest.raises(NotFoundError, match=r"a/x\.txt"):
        store.get_bytes("a/x.txt")
    assert store.url("a/b/y.txt").endswith("a/b/y.txt")


def test_s3_prefix_isolation(s3_env: str) -> None:  # noqa: F811
    a = open_store(f"s3://{BUCKET}/run")
    b = open_store(f"s3://{BUCKET}/run2")
    a.put_bytes("k", b"a")
    b.put_bytes("k", b"b")
    assert a.list() == ["k"] and b.list() == ["k"]
    assert a.get_bytes("k") == b"a"
    assert sorted(o["Key"] for o in raw_s3().list_objects_v2(Bucket=BUCKET)["Contents"]) == ["run/k", "run2/k"]


def test_write_once(store: storage.Store) -> None:
    store.put_bytes("m", b"first", if_absent=True)
    with pytest.raises(AlreadyExistsError, match="write-once"):
        store.put_bytes("m", b"second", if_absent=True)
    assert store.get_bytes("m") == b"first"


def test_commit_fetch_roundtrip(store: storage.Store, tmp_path: Path) -> None:
    src = make_ckpt(tmp_path, 5)
    uri = commit_checkpoint(store, 5, src)
    assert uri == store.url("checkpoints/step-000005")
    assert latest_committed(store) == 5
    manifest = json.loads(store.get_bytes("checkpoints/step-000005/COMMITTED"))
    assert set(manifest["files"]) == {"lora/pytorch_lora_weights.safetensors", "optimizer.pt", "state.json"}
    assert manifest["files"]["optimizer.pt"]["size"] == 500
    out = tmp_path / "fetched"
    fetch_checkpoint(store, 5, out)
    for rel in manifest["files"]:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(AlreadyExistsError, match="step-000005"):
        commit_checkpoint(store, 5, src)


def test_multipart_upload_and_verified_download(s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    store = open_store(f"s3://{BUCKET}/mp", multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    src = make_ckpt(tmp_path, 1, big=12 << 20)
    commit_checkpoint(store, 1, src)
    head = raw_s3().head_object(Bucket=BUCKET, Key="mp/checkpoints/step-000001/big.bin")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts: it really was multipart
    fetch_checkpoint(store, 1, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


class Boom(RuntimeError):
    pass


def test_crash_mid_upload_leaves_no_commit_and_resume_uses_previous(
    store: storage.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_checkpoint(store, 10, make_ckpt(tmp_path, 10))
    real_put = store.put_file
    calls = {"n": 0}

    def flaky_put(key: str, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the pod dies after one file of step 20 reached the store
            raise Boom("killed")
        real_put(key, path)

    monkeypatch.setattr(store, "put_file", flaky_put)
    with pytest.raises(Boom):
        commit_checkpoint(store, 20, make_ckpt(tmp_path, 20))
    monkeypatch.setattr(store, "put_file", real_put)
    assert store.list("checkpoints/step-000020/")  # the partial upload is really there
    assert not store.exists("checkpoints/step-000020/COMMITTED")
    assert list_checkpoints(store) == {10: True, 20: False}
    assert latest_committed(store) == 10
    with pytest.raises(NotFoundError, match="not a committed checkpoint"):
        fetch_checkpoint(store, 20, tmp_path / "x")
    # A retry of the same step replaces the partial upload and commits cleanly.
    src = make_ckpt(tmp_path / "retry", 20)
    commit_checkpoint(store, 20, src)
    assert latest_committed(store) == 20
    fetch_checkpoint(store, 20, tmp_path / "ok")
    assert (tmp_path / "ok" / "optimizer.pt").read_bytes() == (src / "optimizer.pt").read_bytes()


def test_retention_keeps_newest_and_cleans_dead_partials(store: storage.Store, tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        commit_checkpoint(store, step, make_ckpt(tmp_path, step))
    store.put_bytes("checkpoints/step-000002/extra", b"x")
    store.put_bytes("checkpoints/step-000003/COMMITTED", b"", if_absent=False)  # stays committed
    # a dead partial upload older than the newest commit, and an in-flight one newer than it
    store.put_bytes("checkpoints/step-000000/lora.bin", b"partial")
    store.put_bytes("checkpoints/step-000009/lora.bin", b"uploading")
    deleted = apply_retention(store, keep=2)
    assert sorted(deleted) == [0, 1, 2]
    assert list_checkpoints(store) == {3: True, 4: True, 9: False}
    assert store.list("checkpoints/step-000001/") == []
    # keep=0 is treated as 1: the newest committed checkpoint is never deleted
    assert apply_retention(store, keep=0) == [3]
    assert list_checkpoints(store) == {4: True, 9: False}
    assert latest_committed(store) == 4


def test_retention_with_nothing_committed_deletes_nothing(store: storage.Store) -> None:
    store.put_bytes("checkpoints/step-000001/a", b"x")
    assert apply_retention(store, keep=1) == []
    assert list_checkpoints(store) == {1: False}


def test_corrupted_download_is_detected(store: storage.Store, tmp_path: Path) -> None:
    commit_checkpoint(store, 7, make_ckpt(tmp_path, 7))
    store.put_bytes("checkpoints/step-000007/optimizer.pt", os.urandom(500))  # same size, other bytes
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match=r"step-000007/optimizer\.pt is corrupted"):
        fetch_checkpoint(store, 7, out)
    assert not (out / "optimizer.pt").exists()
    commit_checkpoint(store, 8, make_ckpt(tmp_path, 8))
    store.delete(["checkpoints/step-000008/state.json"])
    with pytest.raises(ChecksumError, match=r"state\.json is listed in the COMMITTED manifest but missing"):
        fetch_checkpoint(store, 8, tmp_path / "out2")


def test_progress_roundtrip(store: storage.Store) -> None:
    assert read_progress(store) is None
    write_progress(store, {"step": 1, "phase": "Running"})
    write_progress(store, {"step": 2, "phase": "Running", "lastCheckpoint": None})
    got = read_progress(store)
    assert got is not None and got["step"] == 2 and got["phase"] == "Running"
    assert got["updatedAt"].endswith("Z")
    assert store.list() == ["progress.json"]  # no temporary files left behind


def test_local_commit_in_place(tmp_path: Path) -> None:
    """A local run may write its checkpoint directly under DIR/checkpoints/; commit adds the marker only."""
    store = open_store(f"file://{tmp_path}")
    d = tmp_path / "checkpoints" / "step-000003"
    d.mkdir(parents=True)
    (d / "w.bin").write_bytes(b"weights")
    commit_checkpoint(store, 3, d)
    assert (d / "w.bin").read_bytes() == b"weights"
    assert latest_committed(store) == 3


def test_split_step_uri(tmp_path: Path) -> None:
    s, step = storage.split_step_uri(f"s3://{BUCKET}/runs/r1/checkpoints/step-000050")
    assert (s.uri, step) == (f"s3://{BUCKET}/runs/r1", 50)
    s, step = storage.split_step_uri(f"{tmp_path}/checkpoints/step-000002/")
    assert (s.uri, step) == (tmp_path.as_uri(), 2)
    with pytest.raises(StorageError, match="step-NNNNNN"):
        storage.split_step_uri(f"s3://{BUCKET}/runs/r1/step-000050")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        open_store("gs://bucket/x")


def test_missing_bucket_error_names_uri(s3_env: str) -> None:  # noqa: F811
    store = open_store("s3://no-such-bucket/run", attempts=1)
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/run.*bucket 'no-such-bucket' does not exist"):
        store.check()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/run/progress\.json.*does not exist"):
        write_progress(store, {"step": 1})
    with pytest.raises(StorageError, match="no-such-bucket"):
        latest_committed(store)


def test_unreachable_endpoint_error_is_clear_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = open_store(f"s3://{BUCKET}/run", attempts=3, backoff=0.05, connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://test-bucket/run/progress\.json.*unreachable after 3 attempts"):
        read_progress(store)
    assert time.monotonic() - t0 < 20


def test_bad_credentials_error(s3_env: str) -> None:  # noqa: F811
    """moto does not check signatures, so the 403 comes from botocore's Stubber (same ClientError shape)."""
    from botocore.stub import Stubber

    store = open_store(f"s3://{BUCKET}/run", attempts=3, backoff=0.01)
    with Stubber(store.client) as stub:  # type: ignore[attr-defined]
        stub.add_client_error("get_object", "InvalidAccessKeyId", "bad key", http_status_code=403)
        with pytest.raises(
            StorageError, match=r"s3://test-bucket/run/progress\.json: access denied.*AWS_ACCESS_KEY_ID"
        ):
            read_progress(store)
        stub.assert_no_pending_responses()  # one call: permanent errors are not retried


def test_transient_errors_are_retried(s3_env: str) -> None:  # noqa: F811
    from botocore.stub import Stubber

    store = open_store(f"s3://{BUCKET}/run", attempts=3, backoff=0.01)
    with Stubber(store.client) as stub:  # type: ignore[attr-defined]
        stub.add_client_error("head_object", "SlowDown", "slow", http_status_code=503)
        stub.add_client_error("head_object", "InternalError", "oops", http_status_code=500)
        stub.add_response("head_object", {"ContentLength": 1})
        assert store.exists("x")
        stub.assert_no_pending_responses()


def test_missing_credentials_error(s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(f"s3://{BUCKET}/run", attempts=1)
    with pytest.raises(StorageError, match=r"s3://test-bucket/run/progress\.json: no S3 credentials found"):
        read_progress(store)
