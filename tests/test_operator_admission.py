"""Admission that matches the API server: the CRD's structural schema (draft 4, as Kubernetes
applies it) and its CEL rules, evaluated here with a CEL library (kmock evaluates neither), refuse
what the API server or the child objects would refuse later; `render` refuses the same runs with
the field named."""

from __future__ import annotations

import copy
import re
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
from test_operator_workloads import EXAMPLES, document

from stable_layers_operator import render as rd
from stable_layers_operator.crd import build_crd
from stable_layers_operator.pods import QUANTITY_PATTERN

# ---------------------------------------------------------------- admission: schema + CEL like the API server


def crd_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


CEL = celpy.Environment()


def cel_violations(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every `x-kubernetes-validations` rule (except transition rules, which need oldSelf)
    at every node of `value`, as the API server does on create."""
    found: list[str] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        program = CEL.program(CEL.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            found.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in value.items():
            props = schema.get("properties") or {}
            child = props.get(key) or (schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None)  # fmt: skip
            if child is not None:
                found += cel_violations(child, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            found += cel_violations(schema["items"], sub, f"{path}[{i}]")
    return found


def admission_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server would answer: structural schema errors (draft 4) and CEL failures."""
    schema = crd_schema()
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft4Validator(schema).iter_errors(obj)
    ]
    return errors + cel_violations(schema, obj)


def test_examples_pass_admission() -> None:
    for name in EXAMPLES:
        assert admission_errors(document(name)) == [], name


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = value


BAD = [
    ("metadata.name", "1run", "metadata.name", "DNS-1035"),
    ("metadata.name", "my_run", "metadata.name", "DNS-1035"),
    ("metadata.name", "a" * 41, "metadata.name", "at most 40"),
    ("spec.trainer.resources.requests", {"memory": "800 GB"}, "spec.trainer.resources.requests.memory", "pattern"),
    ("spec.trainer.resources.limits", {"memory": "64GB"}, "spec.trainer.resources.limits.memory", "pattern"),
    ("spec.judge.resources.requests", {"cpu": "lots"}, "spec.judge.resources.requests.cpu", "pattern"),
    ("spec.trainer.shmSize", "64GB", "spec.trainer.shmSize", "pattern"),
    (
        "spec.trainer.tolerations",
        [{"key": "nvidia.com/gpu", "operator": "Exists", "value": "present", "effect": "NoSchedule"}],
        "spec.trainer.tolerations[0]",
        "operator Exists takes no value",
    ),
    (
        "spec.judge.tolerations",
        [{"key": "spot", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}],
        "spec.judge.tolerations[0]",
        "tolerationSeconds only applies to effect NoExecute",
    ),
    ("spec.trainer.tolerations", [{"value": "x"}], "spec.trainer.tolerations[0]", "without a key must use operator Exists"),
    (
        "spec.trainer.tolerations",
        [{"key": "gpu", "value": "h100 sxm", "effect": "NoSchedule"}],
        "spec.trainer.tolerations[0].value",
        "pattern",
    ),
    ("spec.judge.model", "", "spec.judge.model", "at least 1"),
    ("spec.images.worker", "", "spec.images.worker", "at least 1"),
    ("spec.images.pullSecrets", [""], "spec.images.pullSecrets[0]", "at least 1"),
    ("spec.trainer.serviceAccount", "", "spec.trainer.serviceAccount", "at least 1"),
    ("spec.modelCache", {"mountPath": "/cache"}, "spec.modelCache", "exactly one of claimName or volume"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "text"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_runs_are_refused_by_admission_and_by_render(path: str, value: Any, field: str, text: str) -> None:
    doc = copy.deepcopy(document("run.yaml"))
    _set(doc, path, value)
    errors = admission_errors(doc)
    schema_path = field.replace("[", ".").replace("]", "")
    # Root-level CEL rules (the name) report at the root; their message names the field.
    assert any(e.startswith((schema_path, field)) or field in e for e in errors), errors
    with pytest.raises(rd.RenderError) as err:
        rd.render(doc, source="run.yaml")
    message = str(err.value)
    assert field.removeprefix("spec.").split("[")[0] in message or field in message, message
    words = {"pattern": "should match pattern", "at least 1": "at least 1 character"}
    assert words.get(text, text) in message or (text == "pattern" and "pattern" in message), message


def test_the_standard_toleration_renders_valid_with_the_equal_default() -> None:
    doc = document("run.yaml")
    doc["spec"]["trainer"]["tolerations"] = [{"key": "gpu", "value": "h100", "effect": "NoSchedule"}]
    assert admission_errors(doc) == []
    job = next(o for o in rd.render(doc) if o["kind"] == "Job")
    kubernetes_validate.validate(job, "1.33", strict=True)
    assert job["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize("text", ["1", "0.5", ".5", "500m", "64Gi", "1Ki", "1k", "1e3", "2E", "+3", "100M", "1.5Ti"])
def test_kubernetes_quantities_are_accepted(text: str) -> None:
    assert re.fullmatch(QUANTITY_PATTERN, text)


@pytest.mark.parametrize("text", ["800 GB", "64GB", "lots", "1K", "-1", "1.2.3", "Gi", "1gi", ""])
def test_non_quantities_are_refused(text: str) -> None:
    assert not re.fullmatch(QUANTITY_PATTERN, text)
