"""Two-stage VLM reward over a local OpenAI-compatible fake judge (127.0.0.1, real HTTP)."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image
from reward_helpers import candidates_by_row, colour_judge, coloured_group, decode_image, score

from stable_layers.reward import JudgeConfigError, build_scorer
from stable_layers.reward.fake_server import FakeJudgeServer
from stable_layers.spec import CRITERIA, RewardSpec


@pytest.fixture
def server():
    with FakeJudgeServer(hang_seconds=3.0) as srv:
        yield srv


def make_spec(srv: FakeJudgeServer, **openai_kw) -> RewardSpec:
    spec = RewardSpec(kind="openai", tile_size=64, grid_max_side=512)
    spec.openai.base_url = srv.base_url
    spec.openai.model = "judge-under-test"
    spec.openai.backoff = 0.01
    spec.openai.timeout = 5.0
    # colour-coded candidates do not recompose the input; penalties are tested in test_reward_pixel
    spec.penalties.recomposition_error = 0.0
    for k, v in openai_kw.items():
        setattr(spec.openai, k, v)
    return spec


def test_request_shape(server):
    spec = make_spec(server)
    group = coloured_group(4)
    result = score(spec, group)
    assert len(server.requests) == 5  # 4 stage-1 panels + 1 grid
    for body in server.requests:
        assert body["model"] == "judge-under-test"
        assert not [k for k in body if k.startswith("guided")]
        assert "guided_json" not in str(body.get("extra_body", ""))
        assert body["temperature"] == 0.0 and body["seed"] == 0
        rf = body["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
        user = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in user if p["type"] == "image_url")
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert im.format == "PNG"
    required = sorted(tuple(b["response_format"]["json_schema"]["schema"]["required"]) for b in server.requests)
    assert required.count(("1", "2", "3", "4")) == 1  # the grid asks for exactly G scores
    assert sum(1 for r in required if set(CRITERIA) <= set(r)) == 4
    assert all(a == "Bearer EMPTY" for a in server.auth)
    assert result.stats["requests_ok"] == 5 and result.stats["requests_error"] == 0
    assert len(result.latencies) == 5


def test_api_key_comes_from_env(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "s3cret")
    score(make_spec(server, api_key_env="JUDGE_KEY_FOR_TEST"), coloured_group(2))
    assert server.auth and all(a == "Bearer s3cret" for a in server.auth)
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST")
    with pytest.raises(JudgeConfigError, match="JUDGE_KEY_FOR_TEST"):
        build_scorer(make_spec(server, api_key_env="JUDGE_KEY_FOR_TEST"))


def test_scores_map_back_through_shuffled_grid(server):
    n = 8
    server.answer = colour_judge(n)
    spec = make_spec(server)
    result = score(spec, coloured_group(n))
    # the judge saw candidates in a shuffled grid order, and each score came back to its candidate
    grid_bodies = [b for b in server.requests if "1" in b["response_format"]["json_schema"]["schema"]["properties"]]
    order = candidates_by_row(decode_image(grid_bodies[0]), n)
    assert order != list(range(n))
    for k, s in enumerate(result.scores):
        assert s.stages["1"] == pytest.approx(k / 10)
        assert s.stages["2"] == pytest.approx(k / 10)
        assert s.criteria == pytest.approx(dict.fromkeys(CRITERIA, k / 10))
        assert s.reward == pytest.approx(k / 10)  # λ·k/10 + (1−λ)·k/10, no penalties
        assert s.raw["stage2"][0]["index"] == order.index(k) + 1
    assert result.stats["stage1_std"] > 0 and result.stats["stage2_std"] > 0


def test_grid_order_changes_between_queries(server):
    n = 6
    server.answer = colour_judge(n)
    spec = make_spec(server)
    spec.grid_repeats = 3
    result = score(spec, coloured_group(n))
    grids = [b for b in server.requests if "1" in b["response_format"]["json_schema"]["schema"]["properties"]]
    orders = {tuple(candidates_by_row(decode_image(b), n)) for b in grids}
    assert len(grids) == 3 and len(orders) == 3
    assert [s.stages["2"] for s in result.scores] == pytest.approx([k / 10 for k in range(n)])


def test_concurrency_limit(server):
    # answers slow enough that every request is in flight before the first one returns, even when
    # rendering and PNG encoding stagger their start on a busy machine
    server.delay = 0.6
    score(make_spec(server, max_concurrency=3), coloured_group(8))
    assert server.max_in_flight == 3
    server.max_in_flight = 0
    server.delay = 1.5
    score(make_spec(server, max_concurrency=16), coloured_group(8))
    assert server.max_in_flight == 9  # the whole group: 8 panels and the grid at once


def test_retries_transport_errors(server):
    server.script = ["503", "500", "drop"]
    result = score(make_spec(server, retries=3), coloured_group(4))
    assert result.stats["retries"] == 3
    assert result.stats["requests_error"] == 0 and result.stats["requests_ok"] == 5
    assert len(server.requests) == 8
    assert all(not s.flags["judge_failed"] for s in result.scores)


def test_retries_exhausted_and_timeouts_fall_back(server):
    n = 4
    server.answer = colour_judge(n)
    # candidate 1's panel never gets an answer: it times out (0.4 s), is retried once, then given up
    server.route = lambda body: "hang" if candidates_by_row(decode_image(body), n) == [1] else None
    result = score(make_spec(server, retries=1, timeout=0.4), coloured_group(n))
    assert result.stats["requests_error"] == 1 and result.stats["retries"] == 1
    assert result.stats["stage1_fallbacks"] == 1 and result.stats["stage2_failed"] == 0
    assert [s.flags["judge_failed"] for s in result.scores] == [False, True, False, False]
    assert "<error: " in result.scores[1].raw["stage1_answers"][0]


def test_client_error_is_not_retried(server):
    server.script = ["400"]
    result = score(make_spec(server, retries=3), coloured_group(3))
    assert result.stats["requests_error"] == 1 and result.stats["retries"] == 0
    assert len(server.requests) == 4


def test_unknown_model_raises_config_error(server):
    server.default = "404"
    with pytest.raises(JudgeConfigError, match="judge-under-test"):
        score(make_spec(server), coloured_group(2))


def test_malformed_answer_is_reasked_once(server):
    server.script = ["malformed"]
    result = score(make_spec(server), coloured_group(3))
    assert result.stats["requests_parse_error"] == 1 and result.stats["reasks"] == 1
    assert result.stats["stage1_fallbacks"] == 0 and result.stats["stage2_failed"] == 0
    reask = [b for b in server.requests if "could not be used" in b["messages"][-1]["content"][-1]["text"]]
    assert len(reask) == 1


def test_unparseable_twice_gets_group_mean_and_zero_advantage(server):
    n = 6
    server.answer = colour_judge(n, fail_for={2})
    spec = make_spec(server)
    result = score(spec, coloured_group(n))
    assert result.stats["requests_parse_error"] == 2 and result.stats["reasks"] == 1
    assert result.stats["stage1_fallbacks"] == 1
    s2 = result.scores[2]
    assert s2.flags["judge_failed"] and "1" not in s2.stages
    rewards = np.array(result.rewards)
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    assert adv[2] == pytest.approx(0.0, abs=1e-9)
    assert rewards[2] == pytest.approx(np.mean(np.delete(rewards, 2)))
    assert len(s2.raw["stage1_answers"]) == 2  # both raw answers kept


def test_grid_failure_falls_back_to_stage1(server):
    n = 4
    answer = colour_judge(n)
    server.answer = lambda body: (
        "nope" if "1" in body["response_format"]["json_schema"]["schema"]["properties"] else answer(body)
    )
    result = score(make_spec(server), coloured_group(n))
    assert result.stats["stage2_failed"] == 1
    assert [s.reward for s in result.scores] == pytest.approx([k / 10 for k in range(n)])
    assert all("2" not in s.stages for s in result.scores)


def test_whole_group_failing_gives_equal_rewards(server):
    server.default = "malformed"
    result = score(make_spec(server), coloured_group(3))
    assert len(set(result.rewards)) == 1
    assert result.stats["stage1_fallbacks"] == 3 and result.stats["stage2_failed"] == 1


def test_scorer_survives_successive_event_loops(server):
    spec = make_spec(server)
    scorer = build_scorer(spec)
    for _ in range(2):  # e.g. the CLI calling asyncio.run per group
        result = asyncio.run(scorer.score_group(coloured_group(2)))
        assert result.stats["requests_ok"] == 3
