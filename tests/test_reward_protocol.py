"""What a real vLLM judge showed the fake server could not: truncated answers, the deprecated
token-limit field, the structured-output server flag, and config errors that reached the user as
a traceback."""

from __future__ import annotations

import json

import pytest
from reward_helpers import coloured_group
from test_reward_openai import make_spec, score
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.reward.fake_server import FakeJudgeServer
from stable_layers.reward.group_io import save_group
from stable_layers.reward.ladder import make_ladder

runner = CliRunner()


@pytest.fixture
def server():
    with FakeJudgeServer(hang_seconds=3.0) as srv:
        yield srv


def test_request_uses_max_completion_tokens(server):
    score(make_spec(server, max_tokens=321), coloured_group(2))
    for body in server.requests:
        assert body["max_completion_tokens"] == 321 and "max_tokens" not in body


def test_truncated_answer_is_counted_and_reasked_once(server):
    server.script = ["truncated"]  # the first request rambles into the token limit
    result = score(make_spec(server), coloured_group(3))
    assert result.stats["requests_truncated"] == 1 and result.stats["reasks"] == 1
    assert result.stats["requests_parse_error"] == 1
    assert result.stats["stage1_fallbacks"] == 0 and result.stats["stage2_failed"] == 0
    notes = [b["messages"][-1]["content"][-1]["text"] for b in server.requests]
    assert sum("cut off at the token limit" in t for t in notes) == 1


def test_truncated_twice_falls_back_like_a_parse_failure(server):
    n = 4
    server.route = lambda body: "truncated" if "semantic_separation" in json.dumps(body["response_format"]) else None
    result = score(make_spec(server), coloured_group(n))
    assert result.stats["requests_truncated"] == 2 * n and result.stats["stage1_fallbacks"] == n
    assert all(s.flags["judge_failed"] for s in result.scores)


@pytest.fixture(scope="module")
def group_dir(tmp_path_factory):
    _, image, rungs = make_ladder(1, 64)
    return save_group(tmp_path_factory.mktemp("g") / "group", image, rungs)


@pytest.mark.parametrize("command", ["score", "judge-check"])
def test_config_error_is_one_clean_line_exit_2(server, command, group_dir, tmp_path):
    """A wrong --model (HTTP 404): one line naming the option, exit 2, no traceback."""
    server.default = "404"
    args = ["--endpoint", server.base_url, "--model", "no-such-judge"]
    if command == "score":
        args = ["score", str(group_dir), "--out", str(tmp_path / "s.json"), *args]
    else:
        args = ["judge-check", "--groups", "1", "--repeats", "1", "--size", "64", *args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert ("Traceback" not in res.output and res.exception is None) or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert any("reward.openai.model" in ln and "no-such-judge" in ln for ln in lines), res.output
    assert not (tmp_path / "s.json").exists()


def test_operator_judge_args_fix_the_structured_output_backend():
    from vllm_judge import example_run_spec

    from stable_layers_operator.judge import judge_args

    spec = example_run_spec()
    args = judge_args(spec)
    cfg = json.loads(args[args.index("--structured-outputs-config") + 1])
    assert cfg == {"backend": "xgrammar", "disable_any_whitespace": True}
    # extraArgs come last, so a user can still override it (argparse: the last one wins)
    spec.judge.extra_args = ["--structured-outputs-config", '{"backend":"guidance"}']
    assert judge_args(spec)[-2:] == spec.judge.extra_args
