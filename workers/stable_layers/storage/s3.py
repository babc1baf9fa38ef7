"""`S3Store`: the `s3://bucket/prefix` backend of `stable_layers.storage` (boto3).

Configuration comes from boto3's usual sources, so any S3-compatible store works: credentials from
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or a profile, IRSA, ...), the endpoint from
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`, the region from `AWS_REGION` / `AWS_DEFAULT_REGION`
(default us-east-1). With a custom endpoint we use path-style addressing (MinIO, Ceph and moto
expect it); `STABLE_LAYERS_S3_ADDRESSING_STYLE=virtual|path|auto` overrides that.

Retries: botocore's own retries are switched off and tenacity retries *transient* failures only
(connection errors, timeouts, 5xx, throttling) with exponential backoff; permanent errors (missing
bucket, bad credentials, 4xx) fail at once with a message that names the URI and the fix.
Write-once objects use a conditional `PutObject` (`If-None-Match: *`, HTTP 412 when the key exists);
stores that ignore the header degrade to last-writer-wins (documented in docs/storage.md).

No torch here: the operator image imports this module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
import botocore.loaders
import botocore.session
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from stable_layers.storage.base import AlreadyExistsError, NotFoundError, StorageError

T = TypeVar("T")
MiB = 1 << 20
_LOADER = botocore.loaders.create_loader()
"""Shared by every client: it caches the parsed S3 service model (a fresh session re-reads it)."""

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CONNECTION_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
)


def _unwrap(err: BaseException) -> BaseException:
    """boto3's transfer manager wraps client errors; find the underlying one."""
    if isinstance(err, RetriesExceededError) and err.last_exception is not None:
        return _unwrap(err.last_exception)
    if isinstance(err, S3UploadFailedError) and err.__context__ is not None:
        return _unwrap(err.__context__)
    return err


def _code(err: BaseException) -> str:
    if isinstance(err, bce.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def _status(err: BaseException) -> int:
    if isinstance(err, bce.ClientError):
        return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_transient(err: BaseException) -> bool:
    err = _unwrap(err)
    if isinstance(err, _CONNECTION_ERRORS):
        return True
    return _code(err) in _TRANSIENT_CODES or _status(err) in (500, 502, 503, 504)


class S3Store:
    """A run prefix in a bucket. Keys are relative to the prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        attempts: int | None = None,
        backoff: float = 0.5,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
    ):
        if not bucket:
            raise StorageError("s3:// URI without a bucket; use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.attempts = attempts or int(os.environ.get("STABLE_LAYERS_S3_ATTEMPTS", "5"))
        self.backoff = backoff
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)
        self.client = client or self._make_client(connect_timeout, read_timeout)

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> S3Store:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, **options)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    def _make_client(self, connect_timeout: float, read_timeout: float) -> Any:
        style = os.environ.get("STABLE_LAYERS_S3_ADDRESSING_STYLE") or ("path" if self.endpoint else "auto")
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 1, "mode": "standard"},  # tenacity owns retries
            s3={"addressing_style": style},
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        core = botocore.session.get_session()
        core.register_component("data_loader", _LOADER)
        return boto3.session.Session(botocore_session=core).client(
            "s3", endpoint_url=self.endpoint, region_name=region, config=config
        )

    # ------------------------------------------------------------ plumbing

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run `fn` with retries for transient errors; translate failures into StorageErrors."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=10),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (bce.BotoCoreError, bce.ClientError, S3UploadFailedError, RetriesExceededError) as raw:
            raise self._translate(what, key, raw) from raw

    def _translate(self, what: str, key: str, raw: BaseException) -> StorageError:
        err = _unwrap(raw)
        where = self.url(key)
        endpoint = self.endpoint or "the AWS default endpoint"
        code = _code(err)
        if isinstance(err, _CONNECTION_ERRORS):
            return StorageError(
                f"cannot {what} {where}: S3 endpoint {endpoint} is unreachable after {self.attempts} attempts "
                f"({err}); check AWS_ENDPOINT_URL and the network"
            )
        if isinstance(err, bce.NoCredentialsError | bce.PartialCredentialsError):
            return StorageError(
                f"cannot {what} {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if code == "NoSuchBucket":
            return StorageError(
                f"cannot {what} {where}: bucket {self.bucket!r} does not exist at {endpoint}; create it first"
            )
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"cannot {what} {where}: access denied by {endpoint} ({code}); check AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY and the bucket policy"
            )
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return AlreadyExistsError(f"{where} already exists and is write-once")
        if code in _NOT_FOUND_CODES:
            return NotFoundError(f"{where} does not exist")
        return StorageError(f"cannot {what} {where}: {err}")

    # ------------------------------------------------------------ Store interface

    def check(self) -> None:
        try:
            self._call("access", "", lambda: self.client.head_bucket(Bucket=self.bucket))
        except NotFoundError:
            # HeadBucket has no body, so a missing bucket is a bare 404.
            endpoint = self.endpoint or "the AWS default endpoint"
            raise StorageError(
                f"cannot access {self.uri}: bucket {self.bucket!r} does not exist at {endpoint}; create it first"
            ) from None

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self._call(
            "write",
            key,
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra),
        )

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._call("read", key, get)

    def put_file(self, key: str, path: Path) -> None:
        self._call(
            "upload to",
            key,
            lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer),
        )

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        try:
            self._call(
                "download",
                key,
                lambda: self.client.download_file(self.bucket, self._key(key), tmp, Config=self.transfer),
            )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            self._call("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        if full and (not prefix or prefix.endswith("/")) and not full.endswith("/"):
            full += "/"
        strip = f"{self.prefix}/" if self.prefix else ""

        def page_all() -> list[str]:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys

        keys = self._call("list", prefix, page_all)
        return sorted(k.removeprefix(strip) for k in keys if k.startswith(strip))

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]

            def delete_batch(batch: list[dict[str, str]] = batch) -> None:
                out = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if out.get("Errors"):
                    first = out["Errors"][0]
                    raise StorageError(f"cannot delete s3://{self.bucket}/{first.get('Key')}: {first.get('Message')}")

            self._call("delete under", "", delete_batch)
