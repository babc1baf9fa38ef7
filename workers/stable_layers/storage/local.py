"""`LocalStore`: a run store in a local directory (plain paths and file:// URIs)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from stable_layers.storage.base import TMP_PREFIX, AlreadyExistsError, NotFoundError, StorageError


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
            probe = self.root / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StorageError(f"{self.uri}: directory is not writable ({err})") from None

    def _tmp_write(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
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
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
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
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
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
            if p.is_file() and not p.name.startswith(TMP_PREFIX)
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
