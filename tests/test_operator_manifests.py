"""The CRD, RBAC, operator Deployment and examples: generated, structural, schema-valid, in sync."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stable_layers_operator import children as ch
from stable_layers_operator import kube, manifests
from stable_layers_operator.crd import IMMUTABLE_AFTER_START, build_crd
from stable_layers_operator.resource import parse_run

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33"
EXAMPLES = sorted((ROOT / "manifests/examples").glob("*.yaml"))


def crd_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def k8s_validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def walk(node: dict[str, Any], path: str = "") -> Any:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_manifests_match_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/generate_manifests.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    on_disk = yaml.safe_load((ROOT / "manifests/crd/stablelayersruns.stablelayers.io.yaml").read_text())
    assert on_disk == build_crd()


def test_crd_schema_is_structural() -> None:
    """Kubernetes rejects $ref, anyOf with types, prefixItems, const and nodes without a type."""
    for path, node in walk(crd_schema()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "prefixItems", "const", "title", "default"} & set(
            node
        ), path
        assert (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"
        assert node.get("type") != "null", path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if path.startswith(".spec") and node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: unbounded strings break CEL cost estimation"


def test_crd_carries_docstrings_types_and_bounds_from_pydantic() -> None:
    run = crd_schema()["properties"]["spec"]["properties"]["run"]["properties"]
    group = run["grpo"]["properties"]["groupSize"]
    assert group["type"] == "integer" and group["minimum"] == 2 and group["maximum"] == 64
    assert "Candidates G sampled per image" in group["description"]
    window = run["sampler"]["properties"]["sdeWindowRange"]
    assert window == {**window, "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"}}
    preset = run["model"]["properties"]["preset"]
    # null listed: the API server checks enum membership for an explicit null too.
    assert preset["nullable"] is True and preset["enum"] == ["tiny", "tiny-random", None]
    assert run["eval"]["properties"]["layers"]["x-kubernetes-int-or-string"] is True
    assert run["lora"]["properties"]["alpha"]["exclusiveMinimum"] is True
    storage = crd_schema()["properties"]["spec"]["properties"]["storage"]
    assert "uri" in storage["required"] and storage["properties"]["uri"]["pattern"].startswith("^s3://")


def test_crd_metadata_columns_and_immutability_rules() -> None:
    crd = build_crd()
    k8s_validate(crd)
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == "stablelayersruns.stablelayers.io"
    assert crd["spec"]["names"]["shortNames"] == ["slr"] and version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Step"] == ".status.step"
    assert columns["Reward"] == ".status.reward.mean" and columns["Spread"] == ".status.reward.spread"
    assert "Age" in columns
    rules = crd_schema()["x-kubernetes-validations"]
    for path, _ in IMMUTABLE_AFTER_START:
        rule = next(r for r in rules if r["message"].startswith(path + " "))
        assert "oldSelf.status.startTime" in rule["rule"] and f"self.{path} == oldSelf.{path}" in rule["rule"]
    fields = [p for p, _ in IMMUTABLE_AFTER_START]
    assert {"spec.run.model", "spec.run.lora", "spec.run.grpo.groupSize", "spec.storage.uri"} <= set(fields)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema_and_the_models(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    # Kubernetes structural schemas follow draft 4 (boolean exclusiveMinimum).
    jsonschema.Draft4Validator(crd_schema()).validate(obj)
    spec = parse_run(obj["spec"])
    assert len(obj["metadata"]["name"]) <= 40
    if path.name == "run.yaml":
        assert spec.trainer.nodes == 2 and spec.trainer.gpus_per_node == 8 and ch.judge_needed(spec)
        assert spec.run.model.preset is None
    else:
        assert spec.trainer.gpus_per_node == 0 and not ch.judge_needed(spec)


BAD_RUNS = [
    ({"run": {"grpo": {"groupSize": 1}}}, "spec.run.grpo.groupSize", "greater than or equal to 2"),
    ({"run": {"lora": {"rnk": 4}}}, "spec.run.lora.rnk", "unknown field"),
    ({"storage": {"uri": "gs://bucket/x"}}, "spec.storage.uri", "should match pattern"),
    ({"storage": None}, "spec.storage", ""),
    ({"trainer": {"nodes": 0}}, "spec.trainer.nodes", "greater than or equal to 1"),
    ({"judge": {"tensorParallel": 4, "gpus": 2}}, "judge.gpus (2) must be >= judge.tensorParallel (4)", ""),
    ({"run": {"reward": {"kind": "transformers"}}, "trainer": {"gpusPerNode": 0}}, "trainer.gpusPerNode >= 1", ""),
    ({"run": {"sampler": {"trainSteps": 4, "sdeWindowRange": [0, 6]}}}, "sdeWindowRange", "0 <= start < end"),
    ({"storage": {"uri": "s3://b/x", "secretRef": {"name": ""}}}, "spec.storage.secretRef.name", "at least 1"),
]


@pytest.mark.parametrize(("patch", "field", "text"), BAD_RUNS, ids=[b[1] for b in BAD_RUNS])
def test_bad_runs_fail_with_a_message_naming_the_field(patch: dict[str, Any], field: str, text: str) -> None:
    spec: dict[str, Any] = {"storage": {"uri": "s3://bucket/run"}}
    for key, value in patch.items():
        spec[key] = value if not isinstance(value, dict) or key not in spec else {**spec[key], **value}
    if spec.get("storage") is None:
        del spec["storage"]
    with pytest.raises(ValueError) as err:
        parse_run(spec)
    assert field in str(err.value) and text in str(err.value)


def test_crd_schema_rejects_bad_runs_too() -> None:
    obj = yaml.safe_load(EXAMPLES[0].read_text())
    validator = jsonschema.Draft4Validator(crd_schema())
    bad = copy.deepcopy(obj)
    bad["spec"]["run"]["grpo"]["groupSize"] = 100
    bad["spec"]["storage"]["uri"] = "file:///tmp"
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert any("100 is greater than the maximum of 64" in m for m in messages)
    assert any("does not match" in m and "s3://" in m for m in messages)


def test_rbac_is_least_privilege_and_covers_every_call() -> None:
    """Every granted verb is one the code uses (the other direction, every request allowed, is
    recorded against kmock in tests/test_operator_realapi.py)."""
    from stable_layers_operator import handlers

    objs = manifests.rbac()
    for obj in [*objs, manifests.operator_deployment(), manifests.namespace_object()]:
        k8s_validate(obj)
    rules = manifests.RBAC_RULES + manifests.SECRET_RULES
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in item for item in granted)
    groups = {"core": "", "apps": "apps", "batch": "batch"}
    plural = {
        "config_map": "configmaps",
        "service": "services",
        "secret": "secrets",
        "deployment": "deployments",
        "job": "jobs",
        "pod": "pods",
    }
    used = set()
    for kind, (api, noun) in kube._PATHS.items():
        if kind == "Pod":
            continue  # listed and watched only (below); `create_pod` is the test harness'
        verbs = ["get"] if kind == "Secret" else ["get", "create"]
        verbs += {"ConfigMap": ["patch"], "Secret": [], "Deployment": ["patch", "delete"]}.get(kind, ["delete"])
        used |= {(groups[api], plural[noun], v) for v in verbs}
    for group, _, res in handlers.CHILD_RESOURCES:  # kopf indexes: list + watch
        used |= {(group, res, "list"), (group, res, "watch")}
    used |= {("stablelayers.io", "stablelayersruns", v) for v in ("get", "list", "watch", "patch", "delete")}
    used |= {("stablelayers.io", "stablelayersruns/status", v) for v in ("get", "patch")}
    used |= {("stablelayers.io", "stablelayersruns/finalizers", "update")}  # admission of blockOwnerDeletion
    used |= {("", "events", "create")}
    assert granted == used
    bound = {o["roleRef"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"}
    assert manifests.SECRETS_ROLE not in bound  # Secrets: bound per namespace only


def test_operator_deployment_is_single_replica_recreate() -> None:
    dep = manifests.operator_deployment()
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["command"] == ["stable-layers-operator"]
    kustom = yaml.safe_load((ROOT / "manifests/kustomization.yaml").read_text())
    for res in kustom["resources"]:
        assert (ROOT / "manifests" / res).is_file(), res
