"""A training iteration on the tiny-random model with a misbehaving judge completes and reports the
judge failures (issue: "a training iteration completes with some judge failures and reports them")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from reward_helpers import varied_answer

from stable_layers.reward.fake_server import FakeJudgeServer
from stable_layers.spec import load_run_spec

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


class GroupRecorder:
    def __init__(self) -> None:
        self.stats: list[dict[str, float]] = []

    def on_group(self, step, group, score, advantages) -> None:
        self.stats.append(dict(score.stats))


class StickyFailures:
    """Fails the first two distinct panels for good: the 1st with unparsable text, the 2nd with 503."""

    def __init__(self) -> None:
        self.bad: dict[str, str] = {}

    def __call__(self, body) -> str | None:
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        if (
            "semantic_separation" in body["response_format"]["json_schema"]["schema"]["properties"]
            and len(self.bad) < 2
        ):
            self.bad.setdefault(url, ("malformed", "503")[len(self.bad)])
        return self.bad.get(url)


@pytest.mark.slow
def test_training_iteration_survives_judge_failures(tmp_path):
    from stable_layers.trainer.loop import train

    spec = load_run_spec(ROOT / "examples" / "local-run.yaml")
    spec.grpo.max_steps = 1
    spec.reward.kind = "openai"
    spec.reward.tile_size = 64
    spec.reward.openai.backoff = 0.01
    spec.reward.openai.retries = 1
    recorder = GroupRecorder()
    with FakeJudgeServer() as srv:
        spec.reward.openai.base_url = srv.base_url
        srv.answer = varied_answer()  # a constant judge gives zero advantage: a run that learns nothing fails
        # the first panel the judge sees never parses (re-asked, then the group mean), the second always
        # gets HTTP 503 (retried once, then given up); one further request meets a passing 503
        srv.route = StickyFailures()
        srv.script = ["503"]
        record = train(spec, tmp_path / "run", max_steps=1, callbacks=[recorder])
        n_requests = len(srv.requests)
    assert record["step"] >= 1 and math.isfinite(record["loss"])
    total = {
        k: sum(s.get(k, 0.0) for s in recorder.stats)
        for k in ("requests_parse_error", "reasks", "retries", "requests_error", "requests")
    }
    assert total["requests"] == n_requests - total["retries"]
    assert total["requests_parse_error"] == 2 and total["reasks"] == 1
    assert total["retries"] == 2 and total["requests_error"] == 1
    assert sum(s["stage1_fallbacks"] for s in recorder.stats) == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    assert first["scorer_requests_parse_error"] > 0 and first["scorer_requests_error"] > 0
    assert first["scorer_retries"] > 0
    assert math.isfinite(first["reward_mean"])
