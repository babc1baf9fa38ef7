"""End to end: `stable-layers train --out s3://… --metrics-port …` against moto and a real Prometheus.

One short training run (tiny model, pixel reward, 2 optimizer steps, a checkpoint after each) is
checked for both halves of issue 5: the run lives in S3 (committed checkpoint, retention,
progress.json, metrics.jsonl) and the live exporter is scraped by Prometheus so that every
dashboard panel's query returns data while the trainer runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from metrics_data import EXPORTED
from prom_server import (
    PROMETHEUS,
    RULES,
    SKIP_REASON,
    free_port,
    grafana_to_promql,
    load_dashboard_generator,
    start_prometheus,
)
from prometheus_client.parser import text_string_to_metric_families
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401

from stable_layers import storage

ROOT = Path(__file__).resolve().parent.parent
gen = load_dashboard_generator()
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(300)]


def scrape(port: int) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


@pytest.mark.skipif(PROMETHEUS is None, reason=SKIP_REASON)
def test_train_to_s3_with_live_metrics(s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    spec = yaml.safe_load((ROOT / "examples" / "local-run.yaml").read_text())
    spec["name"] = "e2e"
    spec["checkpoint"] = {"everySteps": 1, "keep": 1}  # a checkpoint mid-run, and retention in S3
    spec["grpo"]["optimizerStepsPerIteration"] = 1  # two iterations, so step 1 is checkpointed mid-run
    spec["metrics"] = {"lingerSeconds": 12}  # the final values stay up for several 1 s scrapes
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    port = free_port()
    uri = f"s3://{BUCKET}/runs/e2e"
    env = {**os.environ, "POD_NAMESPACE": "ml", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stable_layers.cli", "train", str(tmp_path / "run.yaml"), "--out", uri]
    cmd += ["--max-steps", "2", "--metrics-port", str(port)]
    log = (tmp_path / "train.log").open("wb")
    trainer = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    prom = None
    try:
        prom = start_prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], [RULES])
        t_start = time.time()
        seen: set[str] = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and trainer.poll() is None:
            text = scrape(port)
            if text:  # family names (histograms) and sample names (counters' _total)
                for fam in text_string_to_metric_families(text):
                    seen |= {fam.name, *(sample.name for sample in fam.samples)}
            time.sleep(0.5)
        rc = trainer.wait(timeout=max(1.0, deadline - time.monotonic()))
        # Grafana draws panels from range queries over the dashboard's time range: ask the same, over
        # the run's lifetime (instant queries after the exit would only see stale markers).
        queries = gen.panel_queries(json.loads((ROOT / "dashboards" / "stable-layers.json").read_text()))
        empty = []
        for title, expr in queries:
            promql = grafana_to_promql(expr, namespace="ml", run="e2e")
            got = prom.api("/api/v1/query_range", query=promql, start=str(t_start), end=str(time.time()), step="1")
            if not got["result"]:
                empty.append(f"{title}: {promql}")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(timeout=10)
        log.close()
        if prom is not None:
            prom.stop()
    output = (tmp_path / "train.log").read_text()[-3000:]
    assert rc == 0, output
    assert set(EXPORTED) <= seen, f"never exposed: {set(EXPORTED) - seen}"
    assert not empty, f"panels without data over the run: {empty}"

    store = storage.open_store(uri)
    assert storage.list_checkpoints(store) == {2: True}  # keep = 1: step 1 was deleted after step 2 committed
    manifest = storage.fetch_checkpoint(store, 2, tmp_path / "ckpt")
    assert "lora/pytorch_lora_weights.safetensors" in manifest["files"]
    progress = storage.read_progress(store)
    assert progress is not None and progress["phase"] == "Succeeded" and progress["step"] == 2
    assert progress["lastCheckpoint"] == {"step": 2, "uri": f"{uri}/checkpoints/step-000002"}
    lines = store.get_bytes("metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
