"""Helpers for the chart tests: find the real helm binary, render the chart, validate manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "stable-layers-operator"
ALL_OPTIONAL = CHART / "ci" / "all-optional-values.yaml"
MANIFESTS = ROOT / "manifests"
NAMESPACE = "slo-system"
RELEASE = "slo"

HELM = shutil.which("helm", path=os.pathsep.join([str(ROOT / ".tools" / "bin"), os.environ.get("PATH", "")]))
HELM_MISSING = "helm not found on PATH or in .tools/bin: run `bash scripts/install-helm.sh` (CI does)"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
# Kinds kubernetes-validate has no schema for (Prometheus Operator CRDs); checked structurally instead.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None, HELM_MISSING
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(*extra: str, values: Path | None = None, sets: dict[str, str] | None = None) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    if values is not None:
        args += ["--values", str(values)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render_text(*extra: str, values: Path | None = None, sets: dict[str, str] | None = None) -> str:
    return helm(*template_args(*extra, values=values, sets=sets)).stdout


def parse_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(*extra: str, values: Path | None = None, sets: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return parse_docs(render_text(*extra, values=values, sets=sets))


def kubernetes_validate_strict(manifest_text: str) -> subprocess.CompletedProcess[str]:
    """Pipe rendered manifests through the real `kubernetes-validate --strict -`."""
    return subprocess.run(
        [str(VALIDATE), "--strict", "-"], input=manifest_text, capture_output=True, text=True, timeout=60, check=False
    )


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def normalise_rules(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules as (apiGroup, resource, verb) triples, so rule grouping and order do not matter."""
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
    return out


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
