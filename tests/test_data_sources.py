"""Training image sources: folder, Parquet, `datasets` folder, S3 (moto server), synthetic."""

from __future__ import annotations

import functools
import io
import operator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401

from stable_layers.data.sources import DataSourceError, SourceStats, decode_image, iter_images
from stable_layers.spec import DataSpec

pytestmark = pytest.mark.timeout(120)


def picture(i: int, size: int = 12) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (size, size + i % 3, 4), dtype=np.uint8)


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        (root / ("sub" if i % 2 else "") / f"img{i}.png").write_bytes(png_bytes(picture(i)))
    Image.fromarray(picture(9)[..., :3]).save(root / "photo.jpg", quality=95)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (root / "notes.txt").write_text("not an image")
    return root


def ids(spec: DataSpec, **kw) -> list[str]:
    return [r.id for r in iter_images(spec, **kw)]


def test_folder_reads_images_and_skips_a_corrupt_file(folder: Path):
    stats = SourceStats()
    recs = list(iter_images(DataSpec(kind="folder", path=str(folder)), stats=stats))
    assert len(recs) == 7 and stats.yielded == 7
    assert stats.listed == 8 and stats.skipped == 1 and stats.skipped_ids == ["broken.png"]
    by_id = {r.id: r.image for r in recs}
    assert np.array_equal(by_id["sub/img1.png"], picture(1))
    assert by_id["photo.jpg"].shape == (12, 12, 4) and (by_id["photo.jpg"][..., 3] == 255).all()
    assert all(r.image.dtype == np.uint8 and r.image.shape[-1] == 4 for r in recs)


def test_missing_or_empty_sources_are_clear_errors(tmp_path: Path):
    with pytest.raises(DataSourceError, match="does not exist"):
        list(iter_images(DataSpec(kind="folder", path=str(tmp_path / "nope"))))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataSourceError, match="holds no images"):
        list(iter_images(DataSpec(kind="folder", path=str(tmp_path / "empty"))))
    with pytest.raises(DataSourceError, match=r"no \.parquet"):
        list(iter_images(DataSpec(kind="parquet", path=str(tmp_path / "empty"))))


def test_sharding_is_disjoint_complete_and_balanced(folder: Path):
    spec = DataSpec(kind="folder", path=str(folder), seed=3)
    everything = ids(spec)
    shards = [ids(spec, rank=r, world_size=3) for r in range(3)]
    assert sorted(functools.reduce(operator.iadd, shards, [])) == sorted(everything)
    assert len(set(functools.reduce(operator.iadd, shards, []))) == len(everything)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="outside world_size"):
        ids(spec, rank=3, world_size=3)


def test_order_is_deterministic_per_seed_and_epoch(folder: Path):
    spec = DataSpec(kind="folder", path=str(folder), seed=7)
    assert ids(spec, epoch=0) == ids(spec, epoch=0)
    orders = {tuple(ids(spec, epoch=e)) for e in range(4)}
    assert len(orders) > 1  # epochs reshuffle
    assert ids(DataSpec(kind="folder", path=str(folder), seed=8)) != ids(spec)
    plain = ids(DataSpec(kind="folder", path=str(folder), shuffle=False))
    assert plain == sorted(plain)
    # numImages keeps the first N of the sorted listing, the same subset every epoch
    sub = DataSpec(kind="folder", path=str(folder), num_images=3)
    # (the sorted listing starts broken.png, img0.png, img2.png; the broken one is skipped)
    assert {*ids(sub, epoch=0)} == {*ids(sub, epoch=5)} == {"img0.png", "img2.png"}


def test_parquet_with_hf_image_column_row_groups_and_a_bad_row(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [{"bytes": png_bytes(picture(i)), "path": None} for i in range(7)]
    values[4] = {"bytes": b"garbage", "path": None}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(values, type=image_type), "label": list(range(7))})
    shard_dir = tmp_path / "pq"
    shard_dir.mkdir()
    pq.write_table(table, shard_dir / "train-0.parquet", row_group_size=3)
    pq.write_table(
        pa.table({"image": pa.array(values[:2], type=image_type), "label": [0, 1]}), shard_dir / "train-1.parquet"
    )
    stats = SourceStats()
    recs = list(iter_images(DataSpec(kind="parquet", path=str(shard_dir)), stats=stats))
    assert stats.skipped == 1 and stats.skipped_ids == ["train-0.parquet:1:1"]
    assert len(recs) == 8
    by_id = {r.id: r.image for r in recs}
    assert np.array_equal(by_id["train-0.parquet:2:0"], picture(6))
    assert np.array_equal(by_id["train-1.parquet:0:1"], picture(1))
    # a single file works too, and sharding stays disjoint and complete
    single = DataSpec(kind="parquet", path=str(shard_dir / "train-0.parquet"), seed=1)
    shards = [ids(single, rank=r, world_size=2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(ids(single)) and not set(shards[0]) & set(shards[1])
    with pytest.raises(DataSourceError, match="'pixels' is not a column"):
        list(iter_images(DataSpec(kind="parquet", path=str(shard_dir), image_column="pixels")))


def test_datasets_save_to_disk_folder(tmp_path: Path):
    import datasets

    pics = [Image.fromarray(picture(i), "RGBA") for i in range(4)]
    ds = datasets.Dataset.from_dict(
        {"id": [f"d{i}" for i in range(4)], "img": pics},
        features=datasets.Features({"id": datasets.Value("string"), "img": datasets.Image()}),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    recs = list(iter_images(DataSpec(kind="parquet", path=str(tmp_path / "ds"), image_column="img", shuffle=False)))
    assert [r.id for r in recs] == ["d0", "d1", "d2", "d3"]
    assert np.array_equal(recs[2].image, picture(2))


def test_synthetic_source_matches_the_generator():
    from stable_layers.data.synthetic import make_design

    recs = list(iter_images(DataSpec(kind="synthetic", num_images=4, size=48, seed=10, shuffle=False)))
    assert [r.id for r in recs] == [make_design(s, 48).id for s in range(10, 14)]
    assert np.array_equal(recs[1].image, make_design(11, 48).image)
    shards = [ids(DataSpec(kind="synthetic", num_images=5, size=32), rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == 3 and len(shards[1]) == 2 and not set(shards[0]) & set(shards[1])


def test_s3_prefix_through_the_store(s3_env: str):  # noqa: F811
    import boto3

    s3 = boto3.session.Session().client("s3", endpoint_url=s3_env, region_name="us-east-1")
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"images/set/{i}.png", Body=png_bytes(picture(i)))
    s3.put_object(Bucket=BUCKET, Key="images/set/bad.png", Body=b"nope")
    s3.put_object(Bucket=BUCKET, Key="images/set/meta.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="images/other/9.png", Body=png_bytes(picture(9)))
    stats = SourceStats()
    recs = list(iter_images(DataSpec(kind="s3", path=f"s3://{BUCKET}/images/set", shuffle=False), stats=stats))
    assert [r.id for r in recs] == ["0.png", "1.png", "2.png"]
    assert np.array_equal(recs[1].image, picture(1))
    assert stats.skipped == 1
    with pytest.raises(DataSourceError, match="holds no images"):
        list(iter_images(DataSpec(kind="s3", path=f"s3://{BUCKET}/nothing-here")))


def test_decode_image_variants():
    a = picture(2)
    assert np.array_equal(decode_image(png_bytes(a)), a)
    assert np.array_equal(decode_image({"bytes": png_bytes(a), "path": None}), a)
    assert np.array_equal(decode_image(Image.fromarray(a, "RGBA")), a)
    assert decode_image(a[..., :3]).shape == (12, 14, 4)
    with pytest.raises(ValueError, match="not an image"):
        decode_image(42)
