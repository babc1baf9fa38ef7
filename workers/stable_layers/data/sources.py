"""Training images from `RunSpec.data`: synthetic designs, a folder, Parquet / `datasets`, or S3.

`iter_images(spec, rank=, world_size=, epoch=)` yields `ImageRecord(id, image)` with `image` an
H×W×4 uint8 RGBA array. Guarantees:

- **Deterministic**: the order depends only on (`data.seed`, epoch) and the listing of the source
  (sorted, so the file system's order does not matter).
- **Sharded**: the epoch's global order is dealt round-robin, rank r taking positions r, r+W, ...;
  shards are disjoint, their union is the whole source, and their lengths differ by at most one.
- **Robust**: an image that cannot be read or decoded is skipped, logged and counted in the
  `SourceStats` passed in; it never ends a run. A missing path or a source with no images at all is
  a `DataSourceError` naming the path and the fix, raised before anything is yielded.

`data.numImages` keeps the first N entries of the *sorted* listing, so the subset is the same every
epoch. Parquet is shuffled in two levels (row groups, then rows inside each group) so that each
row group is decoded once per epoch instead of once per image.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from stable_layers.layers import as_rgba_array
from stable_layers.spec import DataSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_SYNTHETIC = 256
"""Synthetic designs per epoch when `data.numImages` is unset (the field's documented default)."""


class DataSourceError(ValueError):
    """A data source that cannot be used at all (missing, empty, wrong column)."""


@dataclass(frozen=True)
class ImageRecord:
    id: str
    image: np.ndarray = field(repr=False)  # H×W×4 uint8


@dataclass
class SourceStats:
    """What one pass over a source did; `skipped_ids` keeps the first few for the log."""

    listed: int = 0
    yielded: int = 0
    skipped: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_ids) < 20:
            self.skipped_ids.append(item_id)
        log.warning("skipping unreadable image %s: %s", item_id, reason)


@dataclass(frozen=True)
class _Entry:
    id: str
    block: int  # entries of one block are read together (a Parquet row group); 0 elsewhere
    load: Callable[[], Any]  # → bytes, PIL image or array


def decode_image(data: Any) -> np.ndarray:
    """Bytes / PIL image / HF image dict / array → H×W×4 uint8, EXIF orientation applied."""
    if isinstance(data, dict):  # datasets' Image feature stored in Parquet: {"bytes", "path"}
        data = data.get("bytes") or data.get("path")
    if isinstance(data, np.ndarray):
        return as_rgba_array(data)
    if isinstance(data, bytes | bytearray | memoryview):
        data = Image.open(io.BytesIO(bytes(data)))
    elif isinstance(data, str | Path):
        data = Image.open(data)
    if not isinstance(data, Image.Image):
        raise ValueError(f"not an image value: {type(data).__name__}")
    data.load()
    return as_rgba_array(ImageOps.exif_transpose(data))


# ------------------------------------------------------------------------------- listings


def _synthetic_entries(spec: DataSpec) -> list[_Entry]:
    from stable_layers.data import synthetic

    n = spec.num_images or DEFAULT_SYNTHETIC
    seeds = synthetic.split_seeds("train", n, start=spec.seed)
    return [_Entry(synthetic.design_id(s), 0, lambda s=s: synthetic.make_design(s, spec.size).image) for s in seeds]


def _folder_entries(path: Path) -> list[_Entry]:
    if not path.is_dir():
        raise DataSourceError(f"data.path: {path} is not a directory; point it at a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataSourceError(f"data.path: {path} holds no images ({', '.join(IMAGE_SUFFIXES)}), searched recursively")
    return [_Entry(str(p.relative_to(path)), 0, p.read_bytes) for p in files]


def _is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _datasets_entries(path: Path, column: str) -> list[_Entry]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise DataSourceError(
            f"data.path: {path} is a DatasetDict with splits {list(ds)}; point data.path at one split's folder"
        )
    if column not in ds.column_names:
        raise DataSourceError(f"data.imageColumn: {column!r} is not a column of {path}; columns: {ds.column_names}")
    ids = ds["id"] if "id" in ds.column_names and len(ds) else None
    # Memory-mapped Arrow: random access is cheap, so rows need no block structure.
    return [_Entry(str(ids[i]) if ids else f"{path.name}:{i}", 0, lambda i=i: ds[i][column]) for i in range(len(ds))]


class _RowGroupCache:
    """Holds the last decoded row group, so reading a group's rows in a row costs one decode."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.rows: list[Any] = []

    def get(self, file: Path, group: int, row: int, column: str) -> Any:
        import pyarrow.parquet as pq

        if self.key != (str(file), group):
            table = pq.ParquetFile(file).read_row_group(group, columns=[column])
            self.rows, self.key = table.column(column).to_pylist(), (str(file), group)
        value = self.rows[row]
        if isinstance(value, dict) and not value.get("bytes") and value.get("path"):
            value = str(file.parent / value["path"])  # image stored as a path relative to the shard
        elif isinstance(value, str):
            value = str(file.parent / value)
        return value


def _parquet_entries(path: Path, column: str) -> list[_Entry]:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise DataSourceError(f"data.path: {path} holds no .parquet files (nor a `datasets` save_to_disk folder)")
    cache = _RowGroupCache()
    entries: list[_Entry] = []
    block = 0
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except Exception as err:  # pyarrow raises several types for a broken footer
            log.warning("skipping unreadable Parquet file %s: %s", f, err)
            continue
        if column not in meta.schema_arrow.names:
            raise DataSourceError(
                f"data.imageColumn: {column!r} is not a column of {f}; columns: {meta.schema_arrow.names}"
            )
        for g in range(meta.num_row_groups):
            for r in range(meta.metadata.row_group(g).num_rows):
                rel = f.relative_to(path) if path.is_dir() else Path(f.name)
                entries.append(_Entry(f"{rel}:{g}:{r}", block, lambda f=f, g=g, r=r: cache.get(f, g, r, column)))
            block += 1
    return entries


def _s3_entries(uri: str) -> list[_Entry]:
    from stable_layers.storage import open_store

    store = open_store(uri)
    keys = sorted(k for k in store.list("") if Path(k).suffix.lower() in IMAGE_SUFFIXES)
    if not keys:
        raise DataSourceError(f"data.path: {uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [_Entry(k, 0, lambda k=k: store.get_bytes(k)) for k in keys]


def list_entries(spec: DataSpec) -> list[_Entry]:
    """Every entry of the source in its canonical (sorted) order, truncated to `numImages`."""
    if spec.kind == "synthetic":
        return _synthetic_entries(spec)
    assert spec.path is not None  # DataSpec's validator requires it
    if spec.kind == "s3":
        entries = _s3_entries(spec.path)
    else:
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise DataSourceError(f"data.path: {path} does not exist; check the path (kind {spec.kind!r})")
        if spec.kind == "folder":
            entries = _folder_entries(path)
        elif _is_datasets_dir(path):
            entries = _datasets_entries(path, spec.image_column)
        else:
            entries = _parquet_entries(path, spec.image_column)
    if not entries:
        raise DataSourceError(f"data.path: {spec.path} holds no rows")
    return entries[: spec.num_images] if spec.num_images else entries


def epoch_order(entries: list[_Entry], seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Indices of `entries` in this epoch's global order: blocks shuffled, then rows within each."""
    if not shuffle:
        return list(range(len(entries)))
    rng = np.random.default_rng([seed, epoch])
    blocks: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        blocks.setdefault(e.block, []).append(i)
    order: list[int] = []
    for b in rng.permutation(sorted(blocks)):
        rows = blocks[int(b)]
        order.extend(rows[j] for j in rng.permutation(len(rows)))
    return order


def iter_images(
    spec: DataSpec,
    *,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    stats: SourceStats | None = None,
) -> Iterator[ImageRecord]:
    """One epoch of this rank's shard of the source (see the module docstring)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    stats = stats if stats is not None else SourceStats()
    entries = list_entries(spec)
    order = epoch_order(entries, spec.seed, epoch, spec.shuffle)[rank::world_size]
    stats.listed += len(order)
    for i in order:
        entry = entries[i]
        try:
            image = decode_image(entry.load())
        except Exception as err:  # any decode/IO failure of one image must not stop training
            stats.skip(entry.id, f"{type(err).__name__}: {err}")
            continue
        if image.ndim != 3 or min(image.shape[:2]) < 1:
            stats.skip(entry.id, f"empty image of shape {image.shape}")
            continue
        stats.yielded += 1
        yield ImageRecord(entry.id, image)
