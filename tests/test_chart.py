"""The Helm chart, checked with the real helm 3 binary (scripts/install-helm.sh) and kubernetes-validate.

No API server exists here: `helm install` itself, hooks and CRD ordering on a live cluster are not
exercised (docs/testing.md). What is: lint, rendering with default and all-optional values, strict
schema validation of every rendered object, values.schema.json, and agreement with manifests/.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from chart_helpers import (
    ALL_OPTIONAL,
    CHART,
    HELM,
    HELM_MISSING,
    MANIFESTS,
    MONITORING_KINDS,
    NAMESPACE,
    ROOT,
    by_kind,
    helm,
    kubernetes_validate_strict,
    load_yaml_docs,
    normalise_rules,
    one,
    parse_docs,
    render,
    render_text,
    template_args,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=HELM_MISSING)

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))


def test_helm_is_helm3() -> None:
    out = helm("version", "--short").stdout
    assert out.startswith("v3."), f"the docs assume Helm 3 defaults, got {out!r}"


@pytest.mark.parametrize("values", [None, ALL_OPTIONAL], ids=["default", "all-optional"])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        args += ["--values", str(values)]
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_passes_kubernetes_validate_strict() -> None:
    text = render_text("--include-crds")
    proc = kubernetes_validate_strict(text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARN" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    kinds = sorted(d["kind"] for d in parse_docs(text))
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "Service",
            "ServiceAccount",
        ]
    )


def test_all_optional_render_passes_kubernetes_validate_strict() -> None:
    text = render_text("--include-crds", values=ALL_OPTIONAL)
    proc = kubernetes_validate_strict(text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The only objects without a bundled schema are the Prometheus Operator kinds (checked below).
    warned = set(re.findall(r"schema for kind (\w+)", proc.stdout + proc.stderr))
    assert warned == MONITORING_KINDS
    docs = parse_docs(text)
    assert len(by_kind(docs, "Role")) == 2
    assert len(by_kind(docs, "RoleBinding")) == 2
    for kind in MONITORING_KINDS:
        assert one(docs, kind)["apiVersion"] == "monitoring.coreos.com/v1"


def test_operator_deployment_contract() -> None:
    docs = render()
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "two operator pods must never overlap"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/stable-layers/operator:{CHART_META['appVersion']}"
    assert container["command"] == ["stable-layers-operator"]
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe == {"path": "/healthz", "port": "healthz"} and ports["healthz"] == 8080
    assert "readinessProbe" not in container
    assert [e["name"] for e in container["env"]] == [
        "POD_NAMESPACE",
        "STABLE_LAYERS_WORKER_IMAGE",
        "STABLE_LAYERS_JUDGE_IMAGE",
    ]
    assert ports["metrics"] == 9090
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


def test_operator_accepts_the_arguments_the_chart_passes() -> None:
    """The chart's command line goes through the operator's real argument parser."""
    from stable_layers_operator import main

    for values, namespaces in ((None, None), (ALL_OPTIONAL, ["ml-team-a", "ml-team-b"])):
        (container,) = one(render(values=values), "Deployment")["spec"]["template"]["spec"]["containers"]
        args = main.parse_args(container["args"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert args.namespace == namespaces
        assert args.metrics_port == ports["metrics"]
        assert args.liveness == f"http://0.0.0.0:{ports['healthz']}/healthz"
    assert args.verbose is True  # extraArgs of the all-optional values


def test_watch_namespaces_switch_args_and_rbac_scope() -> None:
    docs = render(values=ALL_OPTIONAL)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace=")] == [
        "--namespace=ml-team-a",
        "--namespace=ml-team-b",
    ]
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    cluster_resources = {
        r for role in by_kind(docs, "ClusterRole") for rule in role["rules"] for r in rule["resources"]
    }
    role_resources = {r for rule in roles[0]["rules"] for r in rule["resources"]}
    assert "stablelayersruns" in role_resources
    assert "stablelayersruns" not in cluster_resources, "namespaced mode must not grant cluster-wide run access"
    if not sync_chart_files.split_rules(sync_chart_files.manifest_rules())["clusterRules"]:
        assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    for binding in by_kind(docs, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": "slo-operator", "namespace": NAMESPACE}


def test_rbac_has_no_wildcards() -> None:
    for values in (None, ALL_OPTIONAL):
        docs = render(values=values)
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard in {key}"


def test_monitoring_objects_select_what_exists() -> None:
    docs = render(values=ALL_OPTIONAL)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "ServiceMonitor must select the metrics Service"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    dep_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= dep_labels.items(), "metrics Service must select the operator pod"
    pod_monitor = one(docs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-team-a", "ml-team-b"]}


def test_service_monitor_without_service_fails_clearly() -> None:
    proc = helm(
        *template_args(sets={"metrics.serviceMonitor.enabled": "true", "metrics.service.enabled": "false"}),
        check=False,
    )
    assert proc.returncode != 0
    assert "metrics.service.enabled" in proc.stderr


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() -> None:
    cm = one(render(values=ALL_OPTIONAL), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Stable-Layers"}
    (name, body) = next(iter(cm["data"].items()))
    assert name.endswith(".json")
    shipped = json.loads((CHART / "files" / "dashboards" / "stable-layers.json").read_text(encoding="utf-8"))
    assert json.loads(body) == shipped


def test_optional_objects_off_by_default_on_when_asked() -> None:
    kinds = {d["kind"] for d in render(sets={"dashboard.enabled": "false", "metrics.service.enabled": "false"})}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}
    kinds = {
        d["kind"]
        for d in render(sets={"rbac.create": "false", "serviceAccount.create": "false", "serviceAccount.name": "mine"})
    }
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_existing_service_account_must_be_named() -> None:
    proc = helm(*template_args(sets={"serviceAccount.create": "false"}), check=False)
    assert proc.returncode != 0
    assert "serviceAccount.name is required" in proc.stderr


@pytest.mark.parametrize(
    ("flag", "setting", "error"),
    [
        ("--set", "image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("--set", "metrics.port=0", "metrics.port"),
        ("--set-string", "metrics.port=9090", "metrics.port"),
        ("--set", "watchNamespaces[0]=Team_A", "watchNamespaces.0"),
        ("--set", "imagePullSecret=regcred", "imagePullSecret"),
        ("--set", "dashboard.enabled=maybe", "dashboard.enabled"),
        ("--set", "metrics.serviceMonitor.interval=30", "metrics.serviceMonitor.interval"),
        # An unquoted number is not a tag (use --set-string); helm would otherwise render "2".
        ("--set", "image.tag=2", "image.tag"),
        # The tag belongs in image.tag; a tag smuggled into the repository would yield "repo:latest:0.1.0".
        ("--set", "image.repository=ghcr.io/x/operator:latest", "image.repository"),
        # The judge image must stay pinned (vLLM's torch/transformers pins; infra.md §E).
        ("--set", "images.judge=vllm/vllm-openai", "images.judge"),
    ],
)
def test_values_schema_rejects_bad_values(flag: str, setting: str, error: str) -> None:
    proc = helm(*template_args(flag, setting), check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "schema" in proc.stderr and error in proc.stderr, proc.stderr


def test_values_yaml_is_valid_against_its_schema_and_fully_described() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.validate(defaults, schema)
    jsonschema.validate(_merge(defaults, yaml.safe_load(ALL_OPTIONAL.read_text(encoding="utf-8"))), schema)
    assert set(defaults) | {"global"} == set(schema["properties"]), "every top-level value needs a schema entry"


def _merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of a values file over values.yaml (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_notes_tell_the_next_commands(tmp_path: Path) -> None:
    """NOTES.txt rendered (helm template skips it, so render a copy wrapped in a ConfigMap)."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (copy / "templates" / "NOTES.txt").unlink()
    (copy / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "\n{{- end }}\n")
    (copy / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |-\n"
        '    {{- include "test.notes" . | nindent 4 }}\n'
    )
    for values, expect in ((None, "watches all namespaces"), (ALL_OPTIONAL, "watches: ml-team-a, ml-team-b")):
        args = ["template", "slo", str(copy), "--namespace", NAMESPACE, "--show-only", "templates/notes-test.yaml"]
        if values:
            args += ["--values", str(values)]
        text = yaml.safe_load(helm(*args).stdout)["data"]["notes"]
        assert expect in text
        assert "kubectl get slr" in text
        assert "rollout status deployment/slo-stable-layers-operator" in text
        for path in re.findall(r"kubectl apply -f (\S+)", text):
            assert (ROOT / path).is_file(), f"NOTES.txt points at {path}, which does not exist"


# ---------------------------------------------------------------- agreement with the rest of the repo

sys.path.insert(0, str(ROOT / "scripts"))
import sync_chart_files  # noqa: E402


def test_chart_files_are_in_sync_with_their_sources() -> None:
    """files/ holds copies of the dashboard, the alert rules and the RBAC rules (Helm can only read
    inside the chart): they must equal their single sources."""
    for path, text in sync_chart_files.rendered().items():
        assert path.is_file(), f"{path.relative_to(ROOT)} missing: run scripts/sync_chart_files.py"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run scripts/sync_chart_files.py"
        )


def test_chart_crd_equals_the_one_in_manifests() -> None:
    chart_crds = sorted((CHART / "crds").glob("*.yaml"))
    assert len(chart_crds) == 1, chart_crds
    sources = [
        p
        for p in sorted(MANIFESTS.rglob("*.yaml"))
        if "examples" not in p.parts and any(d.get("kind") == "CustomResourceDefinition" for d in load_yaml_docs(p))
    ]
    assert len(sources) == 1, f"expected one CRD file under manifests/, found {sources}"
    assert chart_crds[0].read_bytes() == sources[0].read_bytes(), "run scripts/generate_manifests.py"
    (crd,) = load_yaml_docs(chart_crds[0])
    assert crd["metadata"]["name"] == "stablelayersruns.stablelayers.io"
    assert crd["spec"]["names"]["shortNames"] == ["slr"]


def test_chart_rbac_equals_manifests_rbac() -> None:
    """Default values (all namespaces): the chart grants exactly what manifests/ grants."""
    docs = render()
    chart_rules = [r for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for r in role["rules"]]
    assert normalise_rules(chart_rules) == normalise_rules(sync_chart_files.manifest_rules())
    # Namespaced mode grants the same triples, just split over a ClusterRole and per-namespace Roles.
    docs = render(values=ALL_OPTIONAL)
    cluster = normalise_rules([r for role in by_kind(docs, "ClusterRole") for r in role["rules"]])
    # Each watched namespace's Role also grants Secrets (never cluster-wide).
    secrets = sync_chart_files.manifest_rules(secrets=True)
    for role in by_kind(docs, "Role"):
        assert cluster | normalise_rules(role["rules"]) == normalise_rules(sync_chart_files.manifest_rules() + secrets)


def test_prometheus_rule_ships_the_observability_alerts() -> None:
    rule = one(render(values=ALL_OPTIONAL), "PrometheusRule")
    source = yaml.safe_load((ROOT / "observability" / "alerts.rules.yaml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == source["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_monitor_selects_the_trainer_pods_the_operator_creates() -> None:
    from stable_layers_operator import children
    from stable_layers_operator.resource import parse_run

    spec = parse_run({"storage": {"uri": "s3://bucket/runs/demo"}})
    job = children.trainer_job(spec, children.Owner(name="demo", namespace="ml-team-a", uid="u1"), 0)
    pod = job["spec"]["template"]
    monitor = one(render(values=ALL_OPTIONAL), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names


def test_chart_deployment_agrees_with_manifests_deployment() -> None:
    """Same program, same arguments (as the operator parses them), ports, strategy and user."""
    from stable_layers_operator import main

    (manifest,) = [
        d
        for p in sorted((MANIFESTS / "operator").glob("*.yaml"))
        for d in load_yaml_docs(p)
        if d["kind"] == "Deployment"
    ]
    chart = one(render(), "Deployment")
    (mc,) = manifest["spec"]["template"]["spec"]["containers"]
    (cc,) = chart["spec"]["template"]["spec"]["containers"]
    assert cc["command"] == mc["command"]
    assert vars(main.parse_args(cc["args"])) == vars(main.parse_args(mc["args"]))
    assert {(p["name"], p["containerPort"]) for p in cc["ports"]} == {
        (p["name"], p["containerPort"]) for p in mc["ports"]
    }
    assert chart["spec"]["strategy"] == manifest["spec"]["strategy"] and chart["spec"]["replicas"] == 1
    run_as = mc.get("securityContext", {}).get("runAsUser") or manifest["spec"]["template"]["spec"][
        "securityContext"
    ].get("runAsUser")
    assert chart["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == run_as


def test_install_helm_is_a_fast_no_op_when_installed() -> None:
    import subprocess
    import time

    installed = ROOT / ".tools" / "bin" / "helm"
    if not installed.is_file():
        pytest.skip("helm not installed in .tools/bin (found elsewhere on PATH)")
    before = installed.stat().st_mtime_ns
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert installed.stat().st_mtime_ns == before, "an installed helm of the pinned version must not be replaced"
    assert elapsed < 5, f"install-helm.sh took {elapsed:.1f}s with helm already installed"


def test_helm_package_ships_crd_and_synced_files(tmp_path: Path) -> None:
    import tarfile

    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("stable-layers-operator-*.tgz")
    assert archive.name == f"stable-layers-operator-{CHART_META['version']}.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for member in (
        "crds/stablelayersruns.stablelayers.io.yaml",
        "files/rbac.yaml",
        "files/prometheus-rules.yaml",
        "files/dashboards/stable-layers.json",
        "values.schema.json",
        "templates/NOTES.txt",
    ):
        assert f"stable-layers-operator/{member}" in names, member


def test_chart_names_the_vllm_release_the_operator_pins() -> None:
    from stable_layers_operator.resource import VLLM_IMAGE

    assert f"vllm/vllm-openai:v{CHART_META['annotations']['stablelayers.io/vllm-version']}" == VLLM_IMAGE


def test_operator_takes_its_default_images_from_the_chart_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """values.yaml pins the judge image; the operator reads the rendered env as the default for runs
    that name no image, and a run's own image still wins."""
    from stable_layers_operator import judge, main
    from stable_layers_operator.children import Owner
    from stable_layers_operator.resource import VLLM_IMAGE, ImageDefaults, parse_run

    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["images"]["judge"] == VLLM_IMAGE
    sets = {"images.judge": "registry.local/vllm-openai:v0.33.0-patched", "images.worker": "registry.local/worker:1"}
    (container,) = one(render(sets=sets), "Deployment")["spec"]["template"]["spec"]["containers"]
    for env in container["env"][1:]:
        monkeypatch.setenv(env["name"], env["value"])
    args = main.parse_args(container["args"])
    try:
        ImageDefaults.configure(worker=args.worker_image, judge=args.judge_image)
        body = {"run": {"reward": {"kind": "openai"}}, "storage": {"uri": "s3://runs-bucket/demo"}}
        spec = parse_run(body)
        assert spec.images.worker == "registry.local/worker:1"
        c = judge.judge_deployment(spec, Owner(name="demo", namespace="ml", uid="1"))["spec"]["template"]["spec"]
        assert c["containers"][0]["image"] == "registry.local/vllm-openai:v0.33.0-patched"
        own = parse_run({**body, "judge": {"image": "vllm/vllm-openai:v0.34.0"}})
        assert own.judge.image == "vllm/vllm-openai:v0.34.0"
    finally:
        ImageDefaults.configure()
    assert parse_run(body).judge.image == VLLM_IMAGE
