"""Dashboard and alerts: generated files are current, every panel's PromQL returns data from a real
Prometheus scraping a real PrometheusCallback, and promtool checks and unit-tests each alert."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from metrics_data import EXPORTED, make_group, make_score, step_record
from prom_server import (
    PROMETHEUS,
    PROMTOOL,
    RULES,
    SKIP_REASON,
    Prometheus,
    finite_values,
    grafana_to_promql,
    load_dashboard_generator,
    start_prometheus,
)

from stable_layers.observability.prometheus import PrometheusCallback

ROOT = Path(__file__).resolve().parent.parent
RULES_TEST = ROOT / "observability" / "alerts.test.yaml"
ALERTS = {"StableLayersRewardSpreadCollapsed", "StableLayersJudgeFailureRateHigh", "StableLayersNoTrainingProgress"}

pytestmark = pytest.mark.timeout(120)


gen = load_dashboard_generator()


def test_checked_in_files_match_the_generator() -> None:
    for path, text in gen.outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `python dashboards/generate.py`"
    assert gen.main(["--check"]) == 0


def test_dashboard_roundtrips_and_covers_the_reward_spread() -> None:
    from grafana_foundation_sdk.models.dashboard import Dashboard

    data = json.loads((ROOT / "dashboards" / "stable-layers.json").read_text())
    Dashboard.from_json(data)  # the SDK's own model accepts it
    assert data["uid"] == gen.UID
    queries = gen.panel_queries(data)
    titles = [t for t, _ in queries]
    assert len(set(titles)) >= 15
    assert "Within-group reward std by stage" in titles[0]  # reward spread comes first
    used = " ".join(e for _, e in queries)
    for name in EXPORTED:
        assert name.removesuffix("_total") in used, f"no panel shows {name}"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for _, expr in queries:
        assert 'namespace=~"$namespace", run=~"$run"' in expr, expr


def test_prometheus_rule_manifest_wraps_the_plain_rules() -> None:
    manifest = yaml.safe_load((ROOT / "observability" / "prometheusrule.yaml").read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert {r["alert"] for g in manifest["spec"]["groups"] for r in g["rules"]} == ALERTS


# ---------------------------------------------------------------- promtool


needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason=SKIP_REASON.replace("prometheus binary", "promtool binary")
)


@needs_promtool
def test_promtool_check_and_test_rules() -> None:
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "3 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    tested = {t["alertname"] for t in yaml.safe_load(RULES_TEST.read_text())["tests"] for t in t["alert_rule_test"]}
    assert tested == ALERTS


@needs_promtool
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("stable_layers_zero_std_group_ratio) > 0.5", "stable_layers_zero_std_group_ratio) > 0.9"),
        ("> 0.2\n", "> 0.5\n"),
        ("> 1800", "> 3600"),
    ],
)
def test_promtool_tests_catch_a_changed_threshold(tmp_path: Path, old: str, new: str) -> None:
    """The unit tests have teeth: each alert's threshold, changed, makes them fail."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / "alerts.rules.yaml").write_text(text.replace(old, new))
    (tmp_path / "alerts.test.yaml").write_text(RULES_TEST.read_text())
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "alerts.test.yaml")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0


# ---------------------------------------------------------------- a real Prometheus


@pytest.fixture
def exporter() -> Iterator[PrometheusCallback]:
    """A trainer-like exporter fed with synthetic steps every 0.2 s until the test ends."""
    cb = PrometheusCallback("r1", "ns", port=0, addr="127.0.0.1")
    stop = threading.Event()

    def feed() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            cb.on_group(step, make_group("a"), make_score("a", [0.2, 0.4, 0.6, 0.8]), [-1.0, -0.3, 0.3, 1.0])
            cb.on_group(step, make_group("b"), make_score("b", [0.5] * 4), [0.0] * 4)
            cb.on_step(step_record(step))
            if step % 5 == 1:
                cb.on_checkpoint(step, f"s3://b/run/checkpoints/step-{step:06d}", 0.4)
            stop.wait(0.2)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield cb
    finally:
        stop.set()
        thread.join(timeout=5)
        cb.close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: PrometheusCallback) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip(SKIP_REASON)
    prom = start_prometheus(tmp_path / "prom", [f"127.0.0.1:{exporter.port}"], [RULES])
    try:
        yield prom
    finally:
        prom.stop()


@pytest.mark.system
def test_every_panel_query_returns_data_from_a_real_prometheus(prometheus: Prometheus) -> None:
    queries = gen.panel_queries(json.loads((ROOT / "dashboards" / "stable-layers.json").read_text()))
    pending = {title + ": " + expr: grafana_to_promql(expr) for title, expr in queries}
    deadline = time.monotonic() + 45  # target discovery alone takes ~5 s
    while pending and time.monotonic() < deadline:
        for key, expr in list(pending.items()):
            if finite_values(prometheus.query(expr)):
                del pending[key]
        time.sleep(0.5)
    assert not pending, f"panels without data after 45 s: {sorted(pending)}"
    # the run/namespace variables' queries find the run
    assert prometheus.api("/api/v1/label/run/values", **{"match[]": "stable_layers_step"}) == ["r1"]
    # a different run's selection shows nothing (the selector is really applied)
    _, expr = queries[0]
    assert prometheus.query(grafana_to_promql(expr, run="other")) == []
    # the alert rules load and evaluate without errors on real data
    rules = prometheus.api("/api/v1/rules")["groups"][0]["rules"]
    assert {r["name"] for r in rules} == ALERTS
    deadline = time.monotonic() + 10
    while any(r.get("health") != "ok" for r in rules) and time.monotonic() < deadline:
        time.sleep(0.5)
        rules = prometheus.api("/api/v1/rules")["groups"][0]["rules"]
    assert all(r["health"] == "ok" for r in rules), rules
