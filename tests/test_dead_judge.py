"""A dead judge must not look like success.

Before: with the judge's port closed a training run ended "Succeeded" — every request failed,
every group fell back to zero advantage, every step was skipped. Now the trainer waits with
backoff (progress says so), counts no step, and past `reward.openai.unavailableSeconds` ends
Failed with reason `JudgeUnavailable`; a run whose steps were all skipped never ends Succeeded.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from pathlib import Path

import pytest
from reward_helpers import varied_answer

from stable_layers import storage
from stable_layers.reward import GroupScore
from stable_layers.reward.base import CandidateScore, Group
from stable_layers.reward.fake_server import FakeJudgeServer
from stable_layers.spec import load_run_spec

ROOT = Path(__file__).resolve().parents[1]


def _score(requests: int, errors: int) -> GroupScore:
    s = CandidateScore(0.5, raw={"stage1_answers": ["<error: APIConnectionError after 1 attempt(s): refused>"]})
    return GroupScore("g", [s, s], {"requests": float(requests), "requests_error": float(errors)})


def _done(score: GroupScore) -> concurrent.futures.Future[GroupScore]:
    fut: concurrent.futures.Future[GroupScore] = concurrent.futures.Future()
    fut.set_result(score)
    return fut


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_wait_backs_off_reports_and_gives_up_at_the_limit():
    from stable_layers.trainer.judge_wait import JudgeUnavailableError, JudgeWait

    clock, msgs = FakeClock(), []
    wait = JudgeWait(20.0, backoff=1.0, base_url="http://judge:8000/v1", on_wait=msgs.append, clock=clock,
                     sleep=clock.sleep)  # fmt: skip
    group = Group("img-1", None, [])  # type: ignore[arg-type]
    with pytest.raises(JudgeUnavailableError, match="unavailableSeconds = 20") as err:
        wait.resolve(_done(_score(5, 5)), group, lambda g: _done(_score(5, 5)))
    assert err.value.reason == "JudgeUnavailable" and "refused" in str(err.value)
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 5.0]  # exponential, the last one cut to the limit
    assert all("waiting for the judge" in m and "img-1" in m for m in msgs) and len(msgs) == 5


def test_wait_resumes_when_the_judge_answers_and_partial_failures_pass_through():
    from stable_layers.trainer.judge_wait import JudgeWait

    clock = FakeClock()
    wait = JudgeWait(100.0, clock=clock, sleep=clock.sleep)
    answers = iter([_score(5, 5), _score(5, 0)])
    got = wait.resolve(_done(_score(5, 5)), Group("g", None, []), lambda g: _done(next(answers)))  # type: ignore[arg-type]
    assert got.stats["requests_error"] == 0 and wait.waits == 2 and wait.down_since is None
    # some requests failed, some answered (a judge killed mid-group): the reward's fallback policy
    partial = _score(5, 3)
    assert wait.resolve(_done(partial), Group("g", None, []), lambda g: pytest.fail("re-scored")) is partial  # type: ignore[arg-type]
    assert wait.resolve(_done(_score(0, 0)), Group("g", None, []), lambda g: pytest.fail("pixel"))  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once the socket is: nothing listens there


def _openai_spec(base_url: str):
    spec = load_run_spec(ROOT / "examples" / "local-run.yaml")
    spec.grpo.max_steps = 1
    spec.reward.kind = "openai"
    spec.reward.tile_size = 64
    spec.reward.openai.base_url = base_url
    spec.reward.openai.backoff = 0.05
    spec.reward.openai.retries = 0
    spec.reward.openai.timeout = 2.0
    return spec


@pytest.mark.slow
def test_training_with_the_judge_port_closed_ends_failed(tmp_path, monkeypatch):
    from stable_layers.trainer import JudgeUnavailableError
    from stable_layers.trainer.loop import train

    spec = _openai_spec(f"http://127.0.0.1:{_closed_port()}/v1")
    spec.reward.openai.unavailable_seconds = 2.0
    written: list[dict] = []
    real = storage.write_progress
    monkeypatch.setattr(storage, "write_progress", lambda store, rec: (written.append(rec), real(store, rec))[1])
    with pytest.raises(JudgeUnavailableError, match="unreachable or failing"):
        train(spec, tmp_path / "run", max_steps=1)
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["phase"] == "Failed" and progress["reason"] == "JudgeUnavailable"
    assert progress["step"] == 0  # no step was counted while the judge was down
    assert any(
        r["phase"] == "Running"
        and r.get("reason") == "WaitingForJudge"
        and r["message"].startswith("waiting for the judge")
        for r in written
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text().strip() == ""


@pytest.mark.slow
def test_training_waits_for_a_judge_that_comes_back(tmp_path, monkeypatch):
    from stable_layers.trainer.loop import train

    with FakeJudgeServer() as srv:
        srv.answer = varied_answer()
        srv.default = "503"  # down ...
        spec = _openai_spec(srv.base_url)
        spec.reward.openai.unavailable_seconds = 120.0
        real = storage.write_progress

        def progress(store, rec):
            if rec["message"].startswith("waiting for the judge"):
                srv.default = "ok"  # ... and back once the trainer says it waits
            return real(store, rec)

        monkeypatch.setattr(storage, "write_progress", progress)
        record = train(spec, tmp_path / "run", max_steps=1)
    assert record["step"] == 1 and record["scorer_requests_error"] == 0
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["phase"] == "Succeeded"


class EqualRewards:
    name = "equal"

    async def score_group(self, group: Group) -> GroupScore:
        return GroupScore(group.image_id, [CandidateScore(0.5) for _ in group.candidates])

    async def aclose(self) -> None:
        return None


@pytest.mark.slow
def test_a_run_whose_steps_were_all_skipped_never_succeeds(tmp_path):
    from stable_layers.trainer import NoLearningSignalError
    from stable_layers.trainer.loop import train

    spec = load_run_spec(ROOT / "examples" / "local-run.yaml")
    with pytest.raises(NoLearningSignalError, match="all 2 optimizer steps"):
        train(spec, tmp_path / "run", max_steps=2, scorer=EqualRewards())
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["phase"] == "Failed" and progress["reason"] == "NoLearningSignal"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["skipped"] for ln in lines] == [True, True]


@pytest.mark.slow
def test_train_cli_reports_judge_errors_in_one_line(tmp_path):
    """A wrong judge model (HTTP 404) and a judge that stays down: one line each, exit 2."""
    import yaml
    from typer.testing import CliRunner

    from stable_layers.cli import app

    doc = yaml.safe_load((ROOT / "examples" / "local-run.yaml").read_text())
    doc["grpo"]["maxSteps"] = 1
    with FakeJudgeServer() as srv:
        for behaviour, expect in (("404", "reward.openai.model"), ("503", "JudgeUnavailable")):
            srv.default = behaviour
            doc["reward"] = {"kind": "openai", "tileSize": 64,
                             "openai": {"baseUrl": srv.base_url, "retries": 0, "backoff": 0.05, "unavailableSeconds": 1}}  # fmt: skip
            run_yaml = tmp_path / f"run-{behaviour}.yaml"
            run_yaml.write_text(yaml.safe_dump(doc))
            res = CliRunner().invoke(app, ["train", str(run_yaml), "--out", str(tmp_path / f"out-{behaviour}")])
            assert res.exit_code == 2, res.output
            errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
            assert "Traceback" not in res.output and len(errors) == 1, res.output
            progress = json.loads((tmp_path / f"out-{behaviour}" / "progress.json").read_text())
            assert progress["phase"] == "Failed" and expect in progress["message"] + res.output
