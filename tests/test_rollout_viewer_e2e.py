"""End to end: a 3-step tiny run scored by the (fake) VLM judge records every group; the viewer built
from it shows each group's candidates and the judge's answers in headless Chromium; the same run
on the S3 emulator; and the trackers of `metrics.reportTo` hold what metrics.jsonl holds."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rollout_judge import train_with_judge, wandb_history
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.observability.rollout_view import list_groups, page_name
from stable_layers.storage import open_store

pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(600)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ANSWER_BG = (0xFF, 0xF3, 0xC4)  # td.answer's background in viewer_page.CSS


def chromium(page: Path, profile: Path, *, shot: Path | None = None) -> str:
    """The DOM Chromium built from `page` (or, with `shot`, a 1400 px wide screenshot of it)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; scripts/install-test-tools.sh)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}"]  # fmt: skip
    cmd += [f"--screenshot={shot}", "--window-size=1400,3000"] if shot else ["--dump-dom"]
    done = subprocess.run([*cmd, page.as_uri()], check=True, timeout=120, capture_output=True, text=True)
    return done.stdout


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("vlm-run")
    records = train_with_judge(str(tmp / "run"), tmp, reportTo=["tensorboard", "wandb"], imagesEverySteps=1)
    return tmp / "run", records


def check_viewer(run_uri: str, out: Path, profile: Path) -> None:
    """Build the viewer with the CLI and check every recorded group against its scores.json, in
    the DOM Chromium builds and in a screenshot."""
    result = CliRunner().invoke(app, ["rollouts", run_uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    store = open_store(run_uri)
    groups = list_groups(store)
    assert sorted(groups) == [0, 1, 2] and all(len(v) == 2 for v in groups.values())
    index = chromium(out / "index.html", profile)
    for step in groups:
        assert f'href="{page_name(step)}"' in index
    answers_seen = 0
    for step, bases in groups.items():
        dom = chromium(out / page_name(step), profile)
        sections = re.findall(r'<section class="group[^"]*" id="g-([^"]+)">(.*?)</section>', dom, re.S)
        assert [s[0] for s in sections] == [b.rsplit("/", 1)[-1] for b in bases]
        for base, (_, sec) in zip(bases, sections, strict=True):
            body = json.loads(store.get_bytes(f"{base}/scores.json"))
            assert html.escape(body["imageId"]) in sec
            rows = re.findall(r"<tr class=\"cand\">(.*?)</tr>", sec, re.S)
            assert len(rows) == body["groupSize"] == 4
            for row, cand in zip(rows, body["candidates"], strict=True):
                # every layer of the candidate, as an inlined image
                assert len(re.findall(r'<img class="thumb" src="data:image/png;base64,', row)) == body["layers"]
                assert f"{cand['reward']:.4f}" in row and f"{cand['advantage']:.3f}" in row
                for text in cand["raw"]["stage1_answers"]:  # the judge's stage-1 answers, verbatim
                    assert html.escape(text, quote=False) in row
                    answers_seen += 1
                if cand["flags"]["judge_failed"]:
                    assert "judge failed" in row and "unusable" in row
            # the grid: printed number → candidate, and the score the judge gave that number
            grid = re.search(r"<table class=\"grid\">(.*?)</table>", sec, re.S)
            assert grid is not None
            answer = json.loads(body["candidates"][0]["raw"]["stage2"][0]["answers"][-1])
            for cand in body["candidates"]:
                shown = cand["raw"]["stage2"][0]["index"]
                assert answer[str(shown)] == cand["raw"]["stage2"][0]["score"]
            cells = re.findall(r"<td>cand (\d+) · ([\d.]+)</td>", grid.group(1))
            by_pos = {c["raw"]["stage2"][0]["index"]: c["index"] for c in body["candidates"]}
            assert [int(c) for c, _ in cells] == [by_pos[p] for p in range(1, 5)]
            assert [float(s) for _, s in cells] == [float(answer[str(p)]) for p in range(1, 5)]
    assert answers_seen >= 6 * 4
    # the first panel never parsed: its group says so
    first = chromium(out / page_name(0), profile)
    assert "unparsable stage-1 answer" in first and "stage-1 fallback" in first
    # rendered: the images change the screenshot, and the answer cells are on screen
    page = out / page_name(1)
    shot = np.asarray(Image.open(io_png(page, profile, "with"))).astype(int)
    stripped = page.with_name("stripped.html")
    stripped.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page.read_text()))
    bare = np.asarray(Image.open(io_png(stripped, profile, "without"))).astype(int)
    changed = int((np.abs(shot[..., :3] - bare[..., :3]).max(axis=-1) > 30).sum())
    assert changed > 2 * 4 * 2 * 0.5 * 96 * 96  # 2 groups × 4 candidates × 2 layers of 96 px
    yellow = int((np.abs(shot[..., :3] - np.array(ANSWER_BG)).max(axis=-1) <= 3).sum())
    assert yellow > 2 * 4 * 150 * 40


def io_png(page: Path, profile: Path, name: str) -> Path:
    shot = page.parent / f"{name}.png"
    chromium(page, profile, shot=shot)
    return shot


def test_viewer_of_a_local_vlm_run(local_run, tmp_path: Path) -> None:
    run, _ = local_run
    check_viewer(str(run), tmp_path / "view", tmp_path / "profile")
    assert (tmp_path / "view" / "index.html").stat().st_mode & 0o777 == 0o644
    assert not list((tmp_path / "view").glob(".tmp-*"))


def test_viewer_of_a_run_on_s3(s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    uri = f"s3://{BUCKET}/runs/vlm"
    records = train_with_judge(uri, tmp_path, reportTo=["tensorboard"], imagesEverySteps=2)
    check_viewer(uri, tmp_path / "view", tmp_path / "profile")
    # the tracker's event file was uploaded next to the run, and holds the same scalars
    keys = open_store(uri).list("tensorboard/")
    assert len(keys) == 1 and "tfevents" in keys[0]
    open_store(uri).get_file(keys[0], tmp_path / "tb" / Path(keys[0]).name)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert [e.step for e in acc.Scalars("reward_mean")] == [r["step"] for r in records]
    assert [e.step for e in acc.Images("rollout/candidate-00")] == [1, 3]  # rollouts of steps 0 and 2


def test_tensorboard_events_hold_every_scalar_and_the_images(local_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, records = local_run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    numeric = {k for r in records for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    numeric -= {"step", "time"}
    assert numeric <= set(tags["scalars"]), numeric - set(tags["scalars"])
    assert {"loss", "reward_mean", "group_std_mean", "zero_std_ratio", "scorer_requests_parse_error"} <= numeric
    for key in numeric:
        got = {e.step: e.value for e in acc.Scalars(key)}
        want = {r["step"]: float(r[key]) for r in records if r.get(key) is not None}
        assert got == pytest.approx(want, rel=1e-6), key
    # one group's 4 candidates per step (imagesEverySteps 1), input + 2 layers side by side
    assert sorted(t for t in tags["images"]) == [f"rollout/candidate-{i:02d}" for i in range(4)]
    for i in range(4):
        events = acc.Images(f"rollout/candidate-{i:02d}")
        assert [e.step for e in events] == [1, 2, 3]
        assert events[0].width > 2.5 * events[0].height  # three tiles in a row
        img = Image.open(__import__("io").BytesIO(events[0].encoded_image_string))
        assert img.size == (events[0].width, events[0].height)
    captions = [t for t in tags["tensors"] if t.startswith("rollout/captions")]
    assert captions, tags["tensors"]
    text = acc.Tensors(captions[0])[0].tensor_proto.string_val[0].decode()
    assert "candidate 0" in text and "reward" in text and "advantage" in text


def test_wandb_offline_run_holds_the_same_scalars(local_run) -> None:
    run, records = local_run
    rows = wandb_history(run)
    by_step: dict[int, dict] = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    assert sorted(by_step) == [r["step"] for r in records]
    for rec in records:
        row = by_step[rec["step"]]
        for key, value in rec.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            assert row[key] == pytest.approx(float(value), rel=1e-9), key
        assert row["rollout/_type"] == "images/separated" and row["rollout/count"] == 4
        captions = row["rollout/captions"]
        assert len(captions) == 4 and all("reward" in c and "advantage" in c for c in captions)
    media = list(run.glob("wandb/offline-run-*/files/media/images/*.png"))
    assert len(media) == 3 * 4
