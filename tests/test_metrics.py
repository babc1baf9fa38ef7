"""PrometheusCallback: names, labels and values of the exposition, driven by synthetic trainer events."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from metrics_data import EXPORTED, make_group, make_score, step_record
from prometheus_client.parser import text_string_to_metric_families

from stable_layers.observability.prometheus import PrometheusCallback, group_summary, judge_outcomes
from stable_layers.reward.base import CandidateScore, GroupScore
from stable_layers.spec import CRITERIA

pytestmark = pytest.mark.timeout(60)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    want = {"run": "r1", "namespace": "ns", **labels}
    return samples(text)[(name, tuple(sorted(want.items())))]


def drive(cb: PrometheusCallback) -> None:
    cb.on_group(1, make_group("a"), make_score("a", [0.2, 0.4, 0.6, 0.8]), [-1.3, -0.4, 0.4, 1.3])
    cb.on_group(1, make_group("b"), make_score("b", [0.5, 0.5, 0.5, 0.5]), [0.0] * 4)
    cb.on_step(step_record(1))
    cb.on_checkpoint(1, "s3://b/run/checkpoints/step-000001", 2.5)


def test_exposition_has_every_stable_name_with_run_and_namespace() -> None:
    cb = PrometheusCallback("r1", "ns", port=None)
    drive(cb)
    text = cb.exposition()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in EXPORTED:
        base = name.removesuffix("_total")
        assert base in families, f"{name} missing from the exposition"
        for s in families[base].samples:
            assert s.labels["run"] == "r1" and s.labels["namespace"] == "ns", s
    assert families["stable_layers_group_reward_std"].type == "histogram"
    assert families["stable_layers_judge_requests"].type == "counter"


def test_values_follow_records_and_group_scores() -> None:
    cb = PrometheusCallback("r1", "ns", port=None)
    drive(cb)
    text = cb.exposition()
    rec = step_record(1)
    assert value(text, "stable_layers_reward_mean") == pytest.approx(rec["reward_mean"])
    assert value(text, "stable_layers_zero_std_group_ratio") == 0.25
    assert value(text, "stable_layers_loss") == pytest.approx(rec["loss"])
    assert value(text, "stable_layers_step") == 1
    assert value(text, "stable_layers_samples_per_second") == pytest.approx(5.3)
    # within-group std: group a = pstdev(.2,.4,.6,.8) = 0.2236, group b = 0 → bucket le=0.001 holds 1
    assert value(text, "stable_layers_group_reward_std_count") == 2
    assert value(text, "stable_layers_group_reward_std_sum") == pytest.approx(0.223607, abs=1e-5)
    assert value(text, "stable_layers_group_reward_std_bucket", le="0.001") == 1
    # stage spread: mean over the step's groups; stage 2 = 1 − reward has the same spread
    assert value(text, "stable_layers_stage_group_std", stage="1") == pytest.approx(0.223607 / 2, abs=1e-5)
    assert value(text, "stable_layers_stage_group_std", stage="2") == pytest.approx(0.223607 / 2, abs=1e-5)
    # criterion k of candidate i = 0.1(k+1) + 0.01 i → group mean 0.1(k+1) + 0.015
    for k, c in enumerate(CRITERIA):
        assert value(text, "stable_layers_criterion_score", criterion=c) == pytest.approx(0.1 * (k + 1) + 0.015)
    # judge (2 groups): requests_ok = 5, 1 parse error, 2 transport retries, 1 re-ask, 6 latencies each
    assert value(text, "stable_layers_judge_requests_total", outcome="ok") == 10
    assert value(text, "stable_layers_judge_requests_total", outcome="parse_error") == 2
    assert value(text, "stable_layers_judge_requests_total", outcome="error") == 0  # pre-created
    assert value(text, "stable_layers_judge_retries_total", kind="transport") == 4
    assert value(text, "stable_layers_judge_retries_total", kind="reask") == 2
    assert value(text, "stable_layers_reward_fallbacks_total", stage="stage2") == 2
    assert value(text, "stable_layers_reward_fallbacks_total", stage="stage1") == 0
    assert value(text, "stable_layers_judge_latency_seconds_count") == 12
    assert value(text, "stable_layers_judge_latency_seconds_sum") == pytest.approx(6.0)
    assert value(text, "stable_layers_group_score_seconds_count") == 2
    assert value(text, "stable_layers_checkpoint_upload_seconds_sum") == 2.5
    assert value(text, "stable_layers_last_checkpoint_step") == 1
    assert value(text, "stable_layers_running") == 1
    cb.on_end(step_record(2))
    text = cb.exposition()
    assert value(text, "stable_layers_running") == 0
    assert value(text, "stable_layers_step") == 2


def test_group_means_restart_each_step() -> None:
    cb = PrometheusCallback("r1", "ns", port=None)
    drive(cb)
    cb.on_group(2, make_group("c"), make_score("c", [0.0, 1.0]), [-1.0, 1.0])
    assert value(cb.exposition(), "stable_layers_stage_group_std", stage="1") == pytest.approx(0.5)


def test_group_summary_prefers_scorer_stats_and_falls_back() -> None:
    scores = [CandidateScore(0.1, stages={"1": 0.1}), CandidateScore(0.3, stages={"1": 0.3})]
    computed = group_summary(GroupScore("x", scores, {}))
    assert computed["reward_std"] == pytest.approx(0.1)
    assert computed["stages"] == {"1": pytest.approx(0.1)}
    assert computed["score_seconds"] is None
    given = group_summary(GroupScore("x", scores, {"reward_std": 0.7, "stage1_std": 0.6, "score_seconds": 4.0}))
    assert (given["reward_std"], given["stages"]["1"], given["score_seconds"]) == (0.7, 0.6, 4.0)
    stats = {"requests": 9, "requests_ok": 6, "requests_parse_error": 2, "requests_error": 1, "retries": 3}
    assert judge_outcomes(stats) == {"ok": 6, "parse_error": 2, "error": 1}


def test_pixel_reward_groups_export_no_judge_traffic() -> None:
    """The pixel scorer makes no requests: judge counters stay at their pre-created 0."""
    cb = PrometheusCallback("r1", "ns", port=None)
    cb.on_group(1, make_group("a"), make_score("a", [0.1, 0.2, 0.3, 0.4], judge=False), [0.0] * 4)
    text = cb.exposition()
    assert value(text, "stable_layers_judge_requests_total", outcome="ok") == 0
    assert value(text, "stable_layers_judge_latency_seconds_count") == 0
    assert value(text, "stable_layers_group_score_seconds_count") == 1


def test_non_finite_values_are_skipped() -> None:
    cb = PrometheusCallback("r1", "ns", port=None)
    cb.on_step(step_record(1))
    cb.on_step({"step": 2, "loss": float("nan"), "kl": None})
    text = cb.exposition()
    assert value(text, "stable_layers_step") == 2
    assert value(text, "stable_layers_loss") == pytest.approx(-0.01)  # the last finite value stays


def test_served_over_http_and_two_exporters_coexist() -> None:
    with (
        PrometheusCallback("r1", "ns", port=0, addr="127.0.0.1") as a,
        PrometheusCallback("r2", "ns", port=0, addr="127.0.0.1") as b,
    ):
        a.on_step(step_record(3))
        b.on_step(step_record(4))
        assert a.port and b.port and a.port != b.port
        body = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics", timeout=5).read().decode()
        assert value(body, "stable_layers_step") == 3
        other = urllib.request.urlopen(f"http://127.0.0.1:{b.port}/metrics", timeout=5).read().decode()
        assert 'run="r2"' in other and 'run="r1"' not in other


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (scripts/install-test-tools.sh)")
def test_promtool_check_metrics_accepts_the_exposition() -> None:
    cb = PrometheusCallback("r1", "ns", port=None)
    drive(cb)
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=cb.exposition(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_exporter_from_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_layers.observability.prometheus import exporter_from_spec
    from stable_layers.spec import parse_run_spec

    spec = parse_run_spec({"name": "r1", "metrics": {"groupStdBuckets": [0.01, 0.1]}})
    assert exporter_from_spec(spec) is None  # no port anywhere: no exporter
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    with exporter_from_spec(spec, port=0) as cb:  # type: ignore[union-attr]
        assert cb.namespace == "ml" and cb.port
        cb.on_group(1, make_group("a"), make_score("a", [0.0, 0.04]), [-1.0, 1.0])
        got = samples(cb.exposition())
        bucket = "stable_layers_group_reward_std_bucket"
        key = (("namespace", "ml"), ("run", "r1"))
        assert got[(bucket, (("le", "0.01"), *key))] == 0  # std of (0, 0.04) = 0.02
        assert got[(bucket, (("le", "0.1"), *key))] == 1
        assert {le for (name, labels), _ in got.items() if name == bucket for k, le in labels if k == "le"} == {
            "0.01",
            "0.1",
            "+Inf",
        }
