"""The CustomResourceDefinition, generated from the pydantic models in `resource.py`.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema. The
conversion (`structural`) inlines every `$ref`, turns `X | None` (anyOf with null) into `X` with
`nullable: true`, tuples (`prefixItems`) into bounded arrays, `const` into `enum`, numeric
`exclusiveMinimum: N` into `minimum: N, exclusiveMinimum: true`, `int | str` into
`x-kubernetes-int-or-string`, and drops titles and defaults (pydantic applies defaults in the
operator and the trainer alike, so the stored object shows what the user wrote).

Strings, lists and maps without a bound get one (`BOUND_*`): the API server estimates the cost of
every CEL rule from the largest possible value, and unbounded strings make the immutability rules
exceed the per-rule budget. The bounds are far above any real value.
"""

from __future__ import annotations

import copy
from typing import Any

from stable_layers_operator.pods import DNS_1035_LABEL
from stable_layers_operator.resource import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    RUN_NAME_MESSAGE,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    StableLayersRunSpec,
    StableLayersRunStatus,
)

BOUND_STRING = 4096
BOUND_ITEMS = 256
BOUND_PROPERTIES = 128

_DROP = {"title", "default", "examples"}

IMMUTABLE_AFTER_START: list[tuple[str, str]] = [
    ("spec.run.name", "metric labels and S3 records carry it"),
    ("spec.run.model", "the LoRA only fits the base model it was trained on"),
    ("spec.run.lora", "checkpoints hold adapters of this rank and these target modules"),
    ("spec.run.sampler.trainSteps", "the SDE window and log-probs depend on the step schedule"),
    ("spec.run.sampler.sdeType", "the log-prob formula depends on it"),
    ("spec.run.sampler.resolution", "latent geometry of the policy"),
    ("spec.run.sampler.layers", "latent geometry of the policy"),
    ("spec.run.grpo.groupSize", "advantages and rollout records are per group of this size"),
    ("spec.storage.uri", "checkpoints and progress of the run live there"),
]
"""Fields a CEL transition rule freezes once `status.startTime` is set, with the reason shown in
the API server's error. Everything else may change (picked up on the next trainer restart)."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
    # Siblings of $ref (description, …) describe this use of the model and win.
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return _resolve(target, defs)


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node into a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    any_of = node.get("anyOf")
    if any_of is not None:
        branches = [_resolve(b, defs) for b in any_of]
        non_null = [b for b in branches if b.get("type") != "null"]
        nullable = len(non_null) < len(branches)
        types = {b.get("type") for b in non_null}
        if len(non_null) == 1:
            merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **non_null[0]}
            if "description" in node:
                merged["description"] = node["description"]
            out = structural(merged, defs)
        elif types <= {"integer", "string"} or (types == {"integer", None} or types == {"string", None}):
            # int | Literal["gt"] and similar: the only mixed type a structural schema allows.
            out = {"x-kubernetes-int-or-string": True}
            if "description" in node:
                out["description"] = node["description"]
        else:
            raise ValueError(f"cannot express anyOf {any_of} in a structural schema")
        if nullable:
            out["nullable"] = True
            if "enum" in out and None not in out["enum"]:
                # The API server checks enum membership for an explicit null too.
                out["enum"] = [*out["enum"], None]
        return out

    for key, value in node.items():
        if key in _DROP or key in {"$defs", "additionalProperties", "properties", "items", "prefixItems"}:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value

    kind = node.get("type")
    if "enum" in out and "type" not in out:
        kinds = {type(v).__name__ for v in out["enum"]}
        out["type"] = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}[kinds.pop()]
        kind = out["type"]
    if kind == "object":
        props = node.get("properties")
        if props:
            out["properties"] = {name: structural(sub, defs) for name, sub in props.items()}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = structural(extra, defs)
            out.setdefault("maxProperties", BOUND_PROPERTIES)
        elif not props:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        prefix = node.get("prefixItems")
        if prefix:
            items = [structural(p, defs) for p in prefix]
            if any(i != items[0] for i in items):
                raise ValueError(f"tuple of mixed types {prefix} has no structural form")
            out["items"] = items[0]
            out["minItems"] = out["maxItems"] = len(items)
        else:
            out["items"] = structural(node.get("items", {}), defs)
            out.setdefault("maxItems", BOUND_ITEMS)
    elif kind == "string" and "enum" not in out:
        out.setdefault("maxLength", BOUND_STRING)
    elif kind is None and "x-kubernetes-int-or-string" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _nested_has(path: str) -> str:
    """`has()` for every level of a dotted path below `spec` (CEL's has() takes one selection)."""
    parts = path.split(".")
    return " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(1, len(parts)))


def openapi_schema() -> dict[str, Any]:
    spec = model_schema(StableLayersRunSpec)
    status = model_schema(StableLayersRunStatus)
    return {
        "type": "object",
        "description": StableLayersRunSpec.__doc__.strip() if StableLayersRunSpec.__doc__ else "",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # A bound on the name keeps the CEL cost estimate of the name rules small (metadata
            # may only constrain name and generateName).
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 253}}},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child object names append suffixes)",
            },
            {"rule": f"self.metadata.name.matches('{DNS_1035_LABEL}')", "message": RUN_NAME_MESSAGE},
            *_immutability_rules_nested(),
        ],
    }


def _immutability_rules_nested() -> list[dict[str, str]]:
    rules = []
    for path, why in IMMUTABLE_AFTER_START:
        new_has = _nested_has(path)
        old_has = new_has.replace("self.", "oldSelf.")
        same = f"({new_has}) == ({old_has}) && (!({new_has}) || self.{path} == oldSelf.{path})"
        rules.append(
            {
                "rule": f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({same})",
                "message": f"{path} cannot change after the run started ({why}); create a new StableLayersRun instead",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


def build_crd() -> dict[str, Any]:
    """The CRD object (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "stable-layers-operator",
                "app.kubernetes.io/part-of": "stable-layers",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                # Not "all": `kubectl delete all --all` would delete the runs (and their checkpoints' jobs).
                "categories": ["stable-layers"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
                        {"name": "Reward", "type": "number", "jsonPath": ".status.reward.mean"},
                        {
                            "name": "Spread",
                            "type": "number",
                            "jsonPath": ".status.reward.spread",
                            "description": "mean within-group reward std",
                        },
                        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1},
                        {
                            "name": "Disruptions",
                            "type": "integer",
                            "jsonPath": ".status.disruptions",
                            "priority": 1,
                            "description": "trainer restarts after evicted pods (not counted against backoffLimit)",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


__all__ = ["API_VERSION", "IMMUTABLE_AFTER_START", "build_crd", "model_schema", "openapi_schema", "structural"]
