"""A real Prometheus for tests (Debian package `prometheus`, shared/docs/infra.md §D).

`start_prometheus(tmp_path, targets, rule_files)` runs the server on 127.0.0.1 with a 1 s scrape and
evaluation interval and its own TSDB directory; `stop()` (call it from a finalizer) ends it by PID.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "observability" / "alerts.rules.yaml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SKIP_REASON = "the prometheus binary is not installed (scripts/install-test-tools.sh installs the Debian package)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:  # 400 bad_data: a PromQL syntax error
            raise AssertionError(f"{path} {params}: HTTP {err.code}: {err.read().decode()[:500]}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("/api/v1/query", query=expr)["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


def start_prometheus(workdir: Path, targets: list[str], rule_files: list[Path] = ()) -> Prometheus:
    assert PROMETHEUS, SKIP_REASON
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": "trainer", "static_configs": [{"targets": targets}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return prom
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    prom.stop()
    raise AssertionError(f"prometheus not ready after 30 s: {log.read_text()[-2000:]}")


def load_dashboard_generator() -> Any:
    """dashboards/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("dashboards_generate", ROOT / "dashboards" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grafana_to_promql(expr: str, namespace: str = "ns", run: str = "r1") -> str:
    """What Grafana sends for one selected run: variables substituted, $__rate_interval = 4 × scrape."""
    return expr.replace("$namespace", namespace).replace("$run", run).replace("$__rate_interval", "4s")
