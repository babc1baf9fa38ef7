"""RolloutRecorder: deterministic sampling and the record layout, through a local store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from metrics_data import make_group, make_score
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401

from stable_layers.layers import as_rgba_array
from stable_layers.observability.rollouts import RolloutRecorder, group_dir, sampled
from stable_layers.storage import open_store

pytestmark = pytest.mark.timeout(60)


def test_sampling_is_deterministic_rate_true_and_nested() -> None:
    ids = [f"img-{i}" for i in range(4000)]
    picked = [i for i in ids if sampled(7, 3, i, 0.1)]
    assert picked == [i for i in ids if sampled(7, 3, i, 0.1)]
    assert 330 < len(picked) < 470  # Binomial(4000, 0.1): mean 400, sd 19
    bigger = {i for i in ids if sampled(7, 3, i, 0.3)}
    assert set(picked) <= bigger  # raising the rate keeps every group recorded before
    assert picked != [i for i in ids if sampled(8, 3, i, 0.1)]  # the seed matters
    assert not sampled(0, 0, "x", 0.0) and sampled(0, 0, "x", 1.0)


def test_record_layout_and_contents(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    rec = RolloutRecorder(store, rate=1.0, seed=0)
    group = make_group("design/42", g=3, layers=2)
    score = make_score("design/42", [0.1, 0.5, 0.9])
    rec.on_group(12, group, score, [-1.2, 0.0, 1.2])
    rec.on_end({})
    name = group_dir("design/42")
    assert "/" not in name
    base = f"rollouts/step-000012/{name}"
    assert store.list(base + "/") == sorted(
        [f"{base}/input.png", f"{base}/scores.json"]
        + [f"{base}/cand-{c:02d}/layer-{k:02d}.png" for c in range(3) for k in range(2)]
    )
    from PIL import Image

    got = np.asarray(Image.open(tmp_path / base / "cand-01" / "layer-01.png"))
    assert np.array_equal(got, as_rgba_array(group.candidates[1].layers[1]))
    body = json.loads(store.get_bytes(f"{base}/scores.json"))
    assert body["imageId"] == "design/42" and body["step"] == 12 and body["groupSize"] == 3
    assert [c["advantage"] for c in body["candidates"]] == [-1.2, 0.0, 1.2]
    assert body["candidates"][2]["stages"] == {"1": 0.9, "2": pytest.approx(0.1)}
    assert set(body["candidates"][0]["criteria"]) == set(score.scores[0].criteria)
    assert rec.written == 1 and rec.failed == 0


def test_rate_zero_and_max_per_step(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    off = RolloutRecorder(store, rate=0.0, background=False)
    off.on_group(1, make_group("a"), make_score("a", [0.1, 0.2, 0.3, 0.4]), [0.0] * 4)
    assert store.list() == []
    capped = RolloutRecorder(store, rate=1.0, max_per_step=1, background=False)
    for gid in ("a", "b"):
        capped.on_group(1, make_group(gid), make_score(gid, [0.1, 0.2, 0.3, 0.4]), [0.0] * 4)
    capped.on_group(2, make_group("c"), make_score("c", [0.1, 0.2, 0.3, 0.4]), [0.0] * 4)
    assert {k.split("/")[1] for k in store.list("rollouts/")} == {"step-000001", "step-000002"}
    assert capped.written == 2
    with pytest.raises(ValueError, match=r"rollouts\.rate"):
        RolloutRecorder(store, rate=1.5)


def test_write_failure_never_raises_into_training(tmp_path: Path) -> None:
    class Broken:
        uri = "s3://gone/run"

        def url(self, key: str = "") -> str:
            return f"{self.uri}/{key}"

        def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
            raise OSError("endpoint unreachable")

    rec = RolloutRecorder(Broken(), rate=1.0)  # type: ignore[arg-type]
    rec.on_group(1, make_group("a"), make_score("a", [0.1, 0.9, 0.3, 0.4]), [0.0] * 4)
    rec.on_end({})
    assert rec.failed == 1 and rec.written == 0


def test_recorder_from_spec(tmp_path: Path) -> None:
    from stable_layers.observability.rollouts import recorder_from_spec
    from stable_layers.spec import parse_run_spec

    store = open_store(tmp_path)
    assert recorder_from_spec(parse_run_spec({"rollouts": {"rate": 0}}), store) is None
    rec = recorder_from_spec(parse_run_spec({"rollouts": {"rate": 0.5, "seed": 3, "maxPerStep": 2}}), store)
    assert rec is not None and (rec.rate, rec.seed, rec.max_per_step) == (0.5, 3, 2)
    rec.on_end({})


def test_records_land_in_s3(s3_env: str) -> None:  # noqa: F811
    store = open_store(f"s3://{BUCKET}/runs/r1")
    rec = RolloutRecorder(store, rate=1.0)
    rec.on_group(3, make_group("img-1", g=2, layers=2), make_score("img-1", [0.2, 0.8]), [-1.0, 1.0])
    rec.on_end({})
    keys = store.list("rollouts/")
    assert keys == sorted(
        ["rollouts/step-000003/img-1/input.png", "rollouts/step-000003/img-1/scores.json"]
        + [f"rollouts/step-000003/img-1/cand-{c:02d}/layer-{k:02d}.png" for c in range(2) for k in range(2)]
    )
    assert json.loads(store.get_bytes("rollouts/step-000003/img-1/scores.json"))["candidates"][1]["advantage"] == 1.0
