"""`stable-layers score` and `stable-layers judge-check` end to end (pixel and the fake judge)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.reward.fake_server import FakeJudgeServer
from stable_layers.reward.group_io import save_group
from stable_layers.reward.ladder import make_ladder
from stable_layers.spec import CRITERIA

runner = CliRunner()


@pytest.fixture(scope="module")
def group_dir(tmp_path_factory):
    _, image, rungs = make_ladder(1, 64)
    return save_group(tmp_path_factory.mktemp("g") / "group", image, rungs)


def test_score_pixel(group_dir, tmp_path):
    out = tmp_path / "scores.json"
    res = runner.invoke(app, ["score", str(group_dir), "--out", str(out), "--backend", "pixel"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    cands = doc["candidates"]
    assert [c["name"] for c in cands] == [f"cand-{i:02d}" for i in range(7)]
    assert all(set(c["criteria"]) == set(CRITERIA) and c["stage2"] is None for c in cands)
    assert cands[0]["reward"] > cands[-1]["reward"]
    assert doc["spread"]["stage1"]["std"] > 0 and doc["spread"]["reward"]["range"] > 0


def test_score_with_endpoint_and_no_grid(group_dir, tmp_path):
    out = tmp_path / "scores.json"
    with FakeJudgeServer() as srv:
        res = runner.invoke(
            app, ["score", str(group_dir), "--out", str(out), "--endpoint", srv.base_url, "--model", "m"]
        )
        assert res.exit_code == 0, res.output
        assert len(srv.requests) == 8 and {b["model"] for b in srv.requests} == {"m"}
        doc = json.loads(out.read_text())
        assert all(c["stage2"] == pytest.approx(0.7) for c in doc["candidates"])
        assert doc["spread"]["stage2"] == pytest.approx({"std": 0.0, "range": 0.0}, abs=1e-12)
        srv.requests.clear()
        res = runner.invoke(app, ["score", str(group_dir), "--out", str(out), "--endpoint", srv.base_url, "--no-grid"])
        assert res.exit_code == 0, res.output
        assert len(srv.requests) == 7
        assert "stage2" not in json.loads(out.read_text())["spread"]


def test_score_errors(tmp_path, group_dir):
    res = runner.invoke(app, ["score", str(tmp_path), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and "input.png" in res.output
    res = runner.invoke(
        app,
        ["score", str(group_dir), "--out", str(tmp_path / "s.json"), "--backend", "pixel", "--endpoint", "http://x"],
    )
    assert res.exit_code != 0 and "--endpoint" in res.output
    # nothing listens on port 9 of localhost: every request fails → exit 1 with a hint
    res = runner.invoke(
        app,
        [
            "score",
            str(group_dir),
            "--out",
            str(tmp_path / "s.json"),
            "--endpoint",
            "http://127.0.0.1:9/v1",
            "--config",
            str(_fast_fail_config(tmp_path)),
        ],
    )
    assert res.exit_code == 1 and "/health" in res.output
    assert not (tmp_path / "s.json").exists()


def _fast_fail_config(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("reward:\n  kind: openai\n  openai:\n    retries: 0\n    timeout: 2\n")
    return p


def test_judge_check_pixel(tmp_path):
    out = tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "judge-check",
            "--backend",
            "pixel",
            "--groups",
            "2",
            "--size",
            "64",
            "--out",
            str(out),
            "--min-spearman",
            "0.8",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["spearman"]["reward"]["mean"] >= 0.8 and rep["groups"] == 2
    res = runner.invoke(
        app, ["judge-check", "--backend", "pixel", "--groups", "1", "--size", "64", "--min-spearman", "1.01"]
    )
    assert res.exit_code == 1


def test_judge_check_against_a_constant_judge(tmp_path):
    """A judge that answers 7 to everything: Spearman 0 for its stages, failures none, and the
    gate fails on the judge's own numbers although the penalties alone rank the ladders."""
    out = tmp_path / "report.json"
    with FakeJudgeServer() as srv:
        res = runner.invoke(
            app,
            [
                "judge-check",
                "--endpoint",
                srv.base_url,
                "--groups",
                "1",
                "--repeats",
                "2",
                "--size",
                "64",
                "--out",
                str(out),
            ],
        )
    assert res.exit_code == 1, res.output
    assert "judge-check gate failed" in res.output and "Traceback" not in res.output
    rep = json.loads(out.read_text())
    assert rep["spearman"]["stage1"]["mean"] == 0.0 and rep["spearman"]["stage2"]["mean"] == 0.0
    assert rep["spearman"]["judge"]["mean"] == 0.0 and rep["spearman"]["reward"]["mean"] > 0.6
    assert rep["group_std"]["stage1"] == pytest.approx(0.0, abs=1e-12)
    assert rep["gate"]["passed"] is False and len(rep["gate"]["reasons"]) == 2
    # (7 + 5 candidates + 1 grid each) × 2 repeats
    assert rep["failures"]["requests"] == 28 and rep["failures"]["requests_error"] == 0
