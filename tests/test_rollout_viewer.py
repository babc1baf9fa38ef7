"""The rollout viewer on synthetic records: step selection, the grid's shuffled order mapped back,
paging (an index without candidate images, at most `--per-page` groups per page, one page's
images read at a time), the zero-spread filter in headless Chromium, and the CLI's errors."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.observability import build_viewer
from stable_layers.observability.rollout_view import (
    StepsError,
    grid_repeats,
    group_view,
    in_steps,
    list_groups,
    parse_steps,
)
from stable_layers.observability.rollouts import RolloutRecorder
from stable_layers.reward.base import Candidate, CandidateScore, Group, GroupScore
from stable_layers.storage import open_store

pytestmark = pytest.mark.timeout(180)
CYAN, MAGENTA = (0, 255, 255), (255, 0, 255)


def solid_group(image_id: str, colour: tuple[int, int, int], g: int = 3, layers: int = 2, size: int = 16) -> Group:
    layer = np.zeros((size, size, 4), np.uint8)
    layer[...] = (*colour, 255)
    img = np.full((size, size, 4), 255, np.uint8)
    return Group(image_id, img, [Candidate([layer.copy() for _ in range(layers)]) for _ in range(g)])


def vlm_score(image_id: str, rewards: list[float], orders: list[list[int]] | None = None) -> GroupScore:
    """A GroupScore shaped like reward/vlm.py's: stage-1 answers, and per candidate the number it
    was printed under in each grid request."""
    orders = orders or [list(range(len(rewards)))[::-1]]
    scores = []
    for i, r in enumerate(rewards):
        stage2 = []
        for order in orders:
            pos = order.index(i)
            answer = "{" + ", ".join(f'"{p + 1}": {order[p] + 1}' for p in range(len(order))) + "}"
            stage2.append({"index": pos + 1, "score": i + 1, "answers": [answer]})
        raw = {"stage1_answers": [f'{{"semantic_separation": {i + 1}}}'], "stage1_scores": {}, "stage2": stage2}
        scores.append(CandidateScore(reward=r, stages={"1": r, "2": r}, flags={"judge_failed": False}, raw=raw))
    return GroupScore(image_id, scores, {"requests": len(rewards) + 1, "requests_ok": len(rewards) + 1})


def write_run(root: Path, steps: int = 3, groups: int = 3) -> None:
    """`steps` steps of `groups` groups; group 0 of every step has zero spread (magenta layers),
    the others spread (cyan layers)."""
    rec = RolloutRecorder(open_store(root), rate=1.0, background=False)
    for s in range(steps):
        for k in range(groups):
            zero = k == 0
            rewards = [0.5, 0.5, 0.5] if zero else [0.1, 0.5, 0.9]
            gid = f"s{s}-g{k}"
            rec.on_group(s, solid_group(gid, MAGENTA if zero else CYAN), vlm_score(gid, rewards), [0.0, 0.0, 0.0])


def test_parse_steps() -> None:
    assert parse_steps(None) == parse_steps("") == [(0, None)]
    assert parse_steps("3, 10:20,40:,:2") == [(3, 3), (10, 20), (40, None), (0, 2)]
    sel = parse_steps("3,10:20")
    assert [s for s in range(25) if in_steps(s, sel)] == [3, *range(10, 21)]
    for bad in ("x", "3:1", "1,,2", "-1"):
        with pytest.raises(StepsError, match="--steps"):
            parse_steps(bad)


def test_grid_order_is_mapped_back_per_request() -> None:
    orders = [[2, 0, 1], [1, 2, 0]]
    score = vlm_score("g", [0.1, 0.2, 0.3], orders)
    cands = [{"index": i, "reward": s.reward, "raw": s.raw} for i, s in enumerate(score.scores)]
    reps = grid_repeats(cands)
    assert [r.shown for r in reps] == orders
    assert [r.scores for r in reps] == [[3, 1, 2], [2, 3, 1]]  # candidate i got score i + 1 everywhere
    assert reps[0].answers == ['{"1": 3, "2": 1, "3": 2}']


def test_problems_name_parse_failures_and_fallbacks() -> None:
    body = {
        "step": 4,
        "imageId": "x",
        "groupSize": 2,
        "layers": 1,
        "stats": {"stage2_failed": 1.0},
        "candidates": [
            {"index": 0, "reward": 0.5, "stages": {}, "flags": {"judge_failed": True},
             "raw": {"stage1_answers": ["not json", "still not json"]}},
            {"index": 1, "reward": 0.5, "stages": {"1": 0.5}, "flags": {},
             "raw": {"stage1_answers": ["nope", "{}"], "stage1_scores": {}}},
        ],
    }  # fmt: skip
    view = group_view("rollouts/step-000004/x", body)
    assert view.zero_spread and view.spread["1"] == 0.0
    text = " | ".join(view.problems)
    assert "candidate 0: 2 unparsable stage-1 answer(s), unusable after the re-ask" in text
    assert "candidate 0: stage-1 fallback" in text
    assert "candidate 1: 1 unparsable stage-1 answer(s), re-asked, then parsed" in text
    assert "stage 2 failed" in text


class CountingStore:
    """A store wrapper logging every read, to see what the viewer loads and when."""

    def __init__(self, inner, log: list[tuple[str, str]]):
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_bytes(self, key: str) -> bytes:
        self.log.append(("get", key))
        return self.inner.get_bytes(key)


class LoggingOut:
    def __init__(self, inner, log: list[tuple[str, str]]):
        self.inner, self.log = inner, log

    def url(self, key: str = "") -> str:
        return self.inner.url(key)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.log.append(("put", key))
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)


def test_large_runs_page_and_read_one_page_of_images_at_a_time(tmp_path: Path) -> None:
    write_run(tmp_path / "run", steps=3, groups=5)
    log: list[tuple[str, str]] = []
    src = CountingStore(open_store(tmp_path / "run"), log)
    res = build_viewer(src, LoggingOut(open_store(tmp_path / "view"), log), per_page=2)
    assert res.steps == 3 and res.groups == 15
    assert res.pages == [f"step-00000{s}{p}.html" for s in range(3) for p in ("", "-p2", "-p3")]
    view = tmp_path / "view"
    for page in res.pages:
        n = len(re.findall(r'<section class="group', (view / page).read_text()))
        assert n == (1 if page.endswith("-p3.html") else 2)
    # navigation between a step's pages and to the neighbouring steps
    first = (view / "step-000001.html").read_text()
    assert 'href="step-000001-p2.html"' in first and 'href="step-000000.html"' in first
    assert 'href="step-000002.html"' in first and 'href="index.html"' in first
    # the index holds the summary and one plot, no candidate image
    index = (view / "index.html").read_text()
    assert len(re.findall(r"<img ", index)) == 1 and "data:image/png" in index
    assert len(index) < 80_000
    # streaming: each page's PNGs are read after the previous page was written
    puts = [i for i, (kind, _) in enumerate(log) if kind == "put"]
    for page_at, next_put in itertools.pairwise(puts):
        between = [k for kind, k in log[page_at:next_put] if kind == "get" and k.endswith(".png")]
        assert len(between) <= 2 * (1 + 3 * 2), between  # one page: 2 groups × (input + 3 cands × 2 layers)
    assert log[-1] == ("put", "index.html")  # written last: a viewer with an index is complete


def test_rebuilding_renders_only_new_or_changed_steps(tmp_path: Path) -> None:
    write_run(tmp_path / "run", steps=3, groups=2)
    first = build_viewer(tmp_path / "run", tmp_path / "view")
    assert first.rendered == first.pages == ["step-000000.html", "step-000001.html", "step-000002.html"]
    # the run goes on: step 3 is recorded; step 2's page gains a "step 3 →" link, 0 and 1 are kept
    rec = RolloutRecorder(open_store(tmp_path / "run"), rate=1.0, background=False)
    rec.on_group(3, solid_group("s3-g0", CYAN), vlm_score("s3-g0", [0.1, 0.5, 0.9]), [0.0] * 3)
    log: list[tuple[str, str]] = []
    again = build_viewer(CountingStore(open_store(tmp_path / "run"), log), tmp_path / "view")
    assert again.rendered == ["step-000002.html", "step-000003.html"]
    assert {k.split("/")[1] for _, k in log if k.endswith(".png")} == {"step-000002", "step-000003"}
    assert 'href="step-000003.html"' in (tmp_path / "view" / "step-000002.html").read_text()
    assert "4 steps" in (tmp_path / "view" / "index.html").read_text()
    # another page size, a deleted page or --rebuild: rendered again
    assert build_viewer(tmp_path / "run", tmp_path / "view").rendered == []
    (tmp_path / "view" / "step-000001.html").unlink()
    assert build_viewer(tmp_path / "run", tmp_path / "view").rendered == ["step-000001.html"]
    assert len(build_viewer(tmp_path / "run", tmp_path / "view", per_page=1).rendered) == 7
    assert len(build_viewer(tmp_path / "run", tmp_path / "view", per_page=1, rebuild=True).rendered) == 7


def test_steps_selection_reads_only_those_steps(tmp_path: Path) -> None:
    write_run(tmp_path / "run", steps=4, groups=2)
    log: list[tuple[str, str]] = []
    res = build_viewer(CountingStore(open_store(tmp_path / "run"), log), tmp_path / "view", steps="1,3:")
    assert res.steps == 2
    read_steps = {k.split("/")[1] for _, k in log}
    assert read_steps == {"step-000001", "step-000003"}
    assert sorted(p.name for p in (tmp_path / "view").glob("step-*.html")) == ["step-000001.html", "step-000003.html"]


def test_zero_spread_page_and_filter(tmp_path: Path) -> None:
    write_run(tmp_path / "run", steps=2, groups=3)
    build_viewer(tmp_path / "run", tmp_path / "view")
    zero = (tmp_path / "view" / "zero-spread.html").read_text()
    assert re.findall(r">(s\d-g\d)</a>", zero) == ["s0-g0", "s1-g0"]
    assert 'href="step-000000.html#g-s0-g0"' in zero
    step = (tmp_path / "view" / "step-000000.html").read_text()
    assert len(re.findall(r'<section class="group zero"', step)) == 1
    assert '<section class="group zero" id="g-s0-g0">' in step

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; scripts/install-test-tools.sh)")

    def shot(page: Path, name: str) -> np.ndarray:
        png = tmp_path / f"{name}.png"
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
               "--window-size=1400,2400", f"--screenshot={png}", page.as_uri()]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=120, capture_output=True)
        return np.asarray(Image.open(png).convert("RGB")).astype(int)

    def count(img: np.ndarray, rgb: tuple[int, int, int]) -> int:
        return int((np.abs(img - np.array(rgb)).max(axis=-1) <= 12).sum())

    everything = shot(tmp_path / "view" / "step-000000.html", "all")
    # 96 px thumbnails: 3 candidates × 2 layers per group, 1 zero-spread group and 2 others
    assert count(everything, MAGENTA) > 0.8 * 6 * 96 * 96
    assert count(everything, CYAN) > 0.8 * 2 * 6 * 96 * 96
    filtered = tmp_path / "view" / "filtered.html"
    filtered.write_text(
        step.replace('<input type="checkbox" id="zero-only">', '<input type="checkbox" id="zero-only" checked>')
    )
    only_zero = shot(filtered, "zero")
    assert count(only_zero, MAGENTA) > 0.8 * 6 * 96 * 96
    assert count(only_zero, CYAN) == 0


def test_pixel_reward_records_and_missing_images_still_render(tmp_path: Path) -> None:
    store = open_store(tmp_path / "run")
    rec = RolloutRecorder(store, rate=1.0, background=False)
    score = GroupScore("p", [CandidateScore(reward=r, stages={"1": r}) for r in (0.2, 0.4)], {})
    rec.on_group(0, solid_group("p", CYAN, g=2, layers=1), score, [-1.0, 1.0])
    (tmp_path / "run" / "rollouts" / "step-000000" / "p" / "cand-01" / "layer-00.png").unlink()
    build_viewer(tmp_path / "run", tmp_path / "view")
    page = (tmp_path / "view" / "step-000000.html").read_text()
    assert "No stage-2 grid" in page and "missing candidate 1 layer 0" in page
    assert "judge answer" not in page  # the pixel reward asks no judge
    assert len(re.findall(r'<img class="thumb"', page)) == 2  # input + candidate 0's layer
    assert list_groups(store) == {0: ["rollouts/step-000000/p"]}


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["rollouts", str(tmp_path / "nothing"), "--out", str(tmp_path / "v")])
    assert empty.exit_code == 2 and "no rollout records" in empty.output and "rollouts.rate" in empty.output
    assert "Traceback" not in empty.output
    write_run(tmp_path / "run", steps=1, groups=1)
    bad = runner.invoke(app, ["rollouts", str(tmp_path / "run"), "--out", str(tmp_path / "v"), "--steps", "5:2"])
    assert bad.exit_code == 2 and "--steps" in bad.output and "Traceback" not in bad.output
    none = runner.invoke(app, ["rollouts", str(tmp_path / "run"), "--out", str(tmp_path / "v"), "--steps", "7:"])
    assert none.exit_code == 2 and "no rollout records in --steps 7:" in none.output
    ok = runner.invoke(app, ["rollouts", str(tmp_path / "run"), "--out", str(tmp_path / "v")])
    assert ok.exit_code == 0 and "1 steps, 1 groups, 1 pages" in ok.output


def test_viewer_from_and_to_s3(s3_env: str) -> None:  # noqa: F811
    run = f"s3://{BUCKET}/runs/r1"
    rec = RolloutRecorder(open_store(run), rate=1.0, background=False)
    rec.on_group(2, solid_group("a", CYAN), vlm_score("a", [0.1, 0.5, 0.9]), [-1.0, 0.0, 1.0])
    res = build_viewer(run, f"{run}/viewer")
    assert res.index == f"{run}/viewer/index.html"
    out = open_store(f"{run}/viewer")
    assert out.list() == ["index.html", "step-000002.html", "viewer.json", "zero-spread.html"]
    assert build_viewer(run, f"{run}/viewer").rendered == []  # the manifest is read back from S3 too
    page = out.get_bytes("step-000002.html").decode()
    assert len(re.findall(r'<img class="thumb" src="data:image/png;base64,', page)) == 1 + 3 * 2
