"""`metrics.reportTo` trackers as callbacks, without training: which values are scalars, which steps
get images, uploads for a remote run, the spec and the CLI's answer when a tracker is missing."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from metrics_data import make_group, make_score, step_record
from PIL import Image
from typer.testing import CliRunner

from stable_layers.observability.trackers import (
    TILE,
    TensorBoardTracker,
    WandbTracker,
    candidate_strip,
    caption,
    scalars,
    trackers_from_spec,
)
from stable_layers.spec import parse_run_spec
from stable_layers.storage import open_store

pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(120)


def test_scalars_keep_finite_numbers_only() -> None:
    rec = {"step": 3, "time": 1.7e9, "loss": -0.5, "samples": 8, "skipped": False, "grad_norm": None,
           "kl": float("nan"), "note": "x", "reward_mean": 0.25}  # fmt: skip
    assert scalars(rec) == {"loss": -0.5, "samples": 8.0, "reward_mean": 0.25}


def test_candidate_strip_and_caption() -> None:
    group = make_group("g", g=2, layers=3, size=400)
    strip = candidate_strip(group.image, group.candidates[0].layers)
    assert strip.dtype == np.uint8 and strip.shape == (TILE, 4 * TILE + 3 * 4, 3)
    score = make_score("g", [0.25, 0.75]).scores[1]
    score.flags["judge_failed"] = True
    assert (
        caption(1, score, 1.0)
        == "candidate 1, reward 0.7500, advantage +1.000, stage 1 0.7500, stage 2 0.2500, judge failed"
    )


def _drive(tracker, steps: int) -> None:
    """What the loop does: groups sampled after `s` steps, then the record of step s + 1."""
    for s in range(steps):
        for gid in ("a", "b"):
            tracker.on_group(s, make_group(gid, g=3), make_score(gid, [0.1, 0.5, 0.9]), [-1.0, 0.0, 1.0])
        tracker.on_step(step_record(s + 1))


def test_tensorboard_images_every_n_steps_one_group(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardTracker(open_store(tmp_path), images_every=2)
    _drive(tb, 5)
    tb.on_end(step_record(5))
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    # rollouts of steps 0, 2, 4 ride with the records of steps 1, 3, 5; one group (the first) each
    assert [e.step for e in acc.Images("rollout/candidate-00")] == [1, 3, 5]
    assert sorted(acc.Tags()["images"]) == ["rollout/candidate-00", "rollout/candidate-01", "rollout/candidate-02"]
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5]
    img = Image.open(io.BytesIO(acc.Images("rollout/candidate-02")[0].encoded_image_string))
    assert img.size == (3 * 8 + 2 * 4, 8)  # 8 px tiles are not enlarged


def test_images_off_writes_scalars_only(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardTracker(open_store(tmp_path), images_every=0)
    _drive(tb, 2)
    tb.on_end({})
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert acc.Tags()["images"] == [] and "reward_mean" in acc.Tags()["scalars"]


def test_tensorboard_resume_drops_what_the_crashed_attempt_logged_past_the_checkpoint(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardTracker(open_store(tmp_path), images_every=0)
    for step in (1, 2, 3):
        first.on_step({"step": step, "loss": 1.0})
    first.on_end({})
    resumed = TensorBoardTracker(open_store(tmp_path), images_every=0)  # resumed from the step-1 checkpoint
    for step in (2, 3):
        resumed.on_step({"step": step, "loss": 2.0})
    resumed.on_end({})
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 2.0)]


class RemoteStore:
    """A store that is not local (as S3 is), recording uploads; the first upload fails."""

    uri = "s3://b/run"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.fail_next = True

    def url(self, key: str = "") -> str:
        return f"{self.uri}/{key}"

    def put_file(self, key: str, path: Path) -> None:
        self.puts.append(key)
        if self.fail_next:
            self.fail_next = False
            raise OSError("connection reset")
        self.files[key] = path.read_bytes()


def test_remote_run_uploads_at_checkpoints_and_end(caplog: pytest.LogCaptureFixture) -> None:
    store = RemoteStore()
    tb = TensorBoardTracker(store, images_every=0)  # type: ignore[arg-type]
    _drive(tb, 1)
    tb.on_checkpoint(1, "s3://b/run/checkpoints/step-000001", 0.1)  # the upload fails: logged, not raised
    assert store.files == {} and "not uploaded" in caplog.text
    tb.on_checkpoint(1, "s3://b/run/checkpoints/step-000001", 0.1)  # retried
    (key,) = store.files
    assert key.startswith("tensorboard/events.out.tfevents.")
    n = len(store.puts)
    tb.on_checkpoint(1, "s3://b/run/checkpoints/step-000001", 0.1)
    assert len(store.puts) == n  # unchanged files are not uploaded again
    _drive(tb, 1)
    scratch = tb.dir.parent
    tb.on_end({})
    assert len(store.files[key]) > 0 and len(store.puts) == n + 1
    assert not scratch.exists()  # the scratch directory is removed after the last upload


def test_wandb_is_offline_and_named_after_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")  # the tracker is offline whatever the environment says
    wb = WandbTracker(open_store(tmp_path), "my-run", project="proj", images_every=0)
    assert wb.run is None and not (tmp_path / "wandb").exists()  # a trainer failing before step 1 leaves nothing
    _drive(wb, 1)
    assert wb.run.settings.mode == "offline" and wb.run.name == "my-run" and wb.run.project == "proj"
    wb.on_end({})
    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1


def test_trackers_from_spec(tmp_path: Path) -> None:
    assert trackers_from_spec(parse_run_spec({}), open_store(tmp_path)) == []
    spec = parse_run_spec({"metrics": {"reportTo": ["tensorboard", "tensorboard"], "imagesEverySteps": 7}})
    (tb,) = trackers_from_spec(spec, open_store(tmp_path))
    assert isinstance(tb, TensorBoardTracker) and tb.images_every == 7
    tb.on_end({})
    from stable_layers.spec import SpecError

    with pytest.raises(SpecError, match="reportTo"):
        parse_run_spec({"metrics": {"reportTo": ["mlflow"]}})


def test_train_without_the_tracker_package_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_layers.cli import app

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    (tmp_path / "run.yaml").write_text("name: t\nmetrics:\n  reportTo: [wandb]\n")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "metrics.reportTo lists wandb but it is not installed" in result.output
    assert "stable-layers-operator[wandb]" in result.output and "Traceback" not in result.output


def test_only_rank_0_gets_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_layers.commands.train import _callbacks

    spec = parse_run_spec({"metrics": {"reportTo": ["tensorboard", "wandb"]}, "rollouts": {"rate": 0}})
    monkeypatch.setenv("RANK", "1")
    assert _callbacks(spec, str(tmp_path / "run"), None) == []
    monkeypatch.setenv("RANK", "0")
    found = _callbacks(spec, str(tmp_path / "run"), None)
    assert [type(cb).__name__ for cb in found] == ["TensorBoardTracker", "WandbTracker"]
    for cb in found:
        cb.on_end({})
