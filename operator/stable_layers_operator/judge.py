"""The vLLM judge: a Deployment of vLLM's OpenAI server and its Service (shared/docs/infra.md §E)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from stable_layers_operator import workload as wl
from stable_layers_operator.children import (
    JUDGE_PORT,
    Names,
    Obj,
    Owner,
    labels,
    metadata,
    resources_for,
    selector,
    storage_env,
    tolerations,
)
from stable_layers_operator.resource import StableLayersRunSpec

# Server-side structured output: xgrammar with whitespace outside strings forbidden. A JSON
# grammar otherwise allows unbounded whitespace, and a weak or confused judge writes `{"a": 2` and
# then newlines until the token limit (seen with vLLM 0.32 on a random-weight Qwen2.5-VL: 27–48 s
# per request, nothing parsed). vLLM accepts `disable_any_whitespace` only with an explicit
# xgrammar/guidance backend and only as a server flag; the per-request field cannot set it.
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def judge_args(spec: StableLayersRunSpec) -> list[str]:
    """`vllm serve` arguments of the judge container (`extraArgs` last, so they can override)."""
    j = spec.judge
    return [
        j.model,
        "--host",
        "0.0.0.0",
        "--port",
        str(JUDGE_PORT),
        "--served-model-name",
        j.served_model_name,
        "--tensor-parallel-size",
        str(j.tensor_parallel),
        "--max-model-len",
        str(j.max_model_len),
        "--limit-mm-per-prompt",
        json.dumps(j.limit_mm_per_prompt, separators=(",", ":")),
        "--gpu-memory-utilization",
        str(j.gpu_memory_utilization),
        "--structured-outputs-config",
        json.dumps(STRUCTURED_OUTPUTS, separators=(",", ":")),
        *j.extra_args,
    ]


SPEC_HASH_ANNOTATION = "stablelayers.io/spec-hash"
"""Hash of the Deployment spec the operator last wrote: compared instead of the live spec, which
the API server fills with defaults."""
PROBE_TIMEOUT_SECONDS = 10
"""vLLM answers /health from the event loop that also feeds the GPU; under a full batch it can
take seconds, and the kubelet's default of 1 s would restart a busy, healthy judge."""


def judge_deployment(spec: StableLayersRunSpec, owner: Owner) -> Obj:
    names = Names(owner.name)
    j = spec.judge
    gpus = j.gpus if j.gpus is not None else j.tensor_parallel
    probe = {"httpGet": {"path": "/health", "port": JUDGE_PORT}, "timeoutSeconds": PROBE_TIMEOUT_SECONDS}
    cache, cache_mount = wl.cache_volume(spec)
    tmp, tmp_mount = wl.tmp_volume()
    volumes: list[Obj] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}, tmp, cache]
    mounts: list[Obj] = [{"name": "dshm", "mountPath": "/dev/shm"}, tmp_mount, cache_mount]
    if j.model_volume:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": j.model_volume, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    more_volumes, more_mounts = wl.extra_volumes(j)
    env = wl.merge_env([*(storage_env(spec) if j.model.startswith("s3://") else []), *wl.cache_env(spec)], j)
    args = judge_args(spec)
    if "--download-dir" not in j.extra_args:
        args += ["--download-dir", wl.download_dir(spec)]
    container: Obj = {
        "name": "vllm",
        "image": j.image,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["vllm", "serve"],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": JUDGE_PORT}],
        "resources": resources_for(j.resources, gpus, wl.default_requests(gpus, spec.model_cache is not None)),
        "volumeMounts": mounts + more_mounts,
        "securityContext": wl.overridden(wl.judge_container_security(), j.container_security_context),
        # Model loading takes minutes; liveness/readiness only start after the startup probe.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": max(j.startup_seconds // 10, 1)},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
    }
    pod: Obj = {
        "securityContext": wl.overridden(wl.judge_pod_security(), j.security_context),
        "containers": [container],
        "volumes": volumes + more_volumes,
    }
    if spec.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.images.pull_secrets]
    if j.node_selector:
        pod["nodeSelector"] = dict(j.node_selector)
    if j.tolerations:
        pod["tolerations"] = tolerations(j.tolerations)
    deployment_spec: Obj = {
        "replicas": j.replicas,
        # A rolling update would need twice the GPUs; the judge is stateless, so replace it.
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": selector(owner.name, "judge")},
        "template": {"metadata": {"labels": labels(owner.name, "judge")}, "spec": pod},
    }
    meta = metadata(owner, names.judge, "judge")
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(deployment_spec)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deployment_spec}


def spec_hash(deployment_spec: Obj) -> str:
    return hashlib.sha256(json.dumps(deployment_spec, sort_keys=True).encode()).hexdigest()[:16]


def _merge_diff(current: Any, desired: Any) -> Any:
    """RFC 7386 merge patch turning `current` into `desired` (lists are replaced whole)."""
    if not (isinstance(current, dict) and isinstance(desired, dict)):
        return desired
    out: Obj = {}
    for key, value in desired.items():
        if key not in current:
            out[key] = value
        elif current[key] != value:
            sub = _merge_diff(current[key], value)
            if sub != {} or not isinstance(value, dict):
                out[key] = sub
    out.update({key: None for key in current if key not in desired})
    return out


MUTABLE_SPEC = ("replicas", "strategy", "template")
"""What `judge_patch` may change; the selector is immutable (and never changes here)."""


def judge_patch(current: Obj, desired: Obj) -> Obj | None:
    """The merge patch that brings a live judge Deployment to `desired` (replicas, image, args,
    resources, probes, volumes, ...), or None when the spec it was written from is unchanged.
    Fields the API server defaulted are left alone unless the desired template moved."""
    want = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    if ((current.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == want:
        return None
    live = current.get("spec") or {}
    spec = _merge_diff({k: live[k] for k in MUTABLE_SPEC if k in live}, {k: desired["spec"][k] for k in MUTABLE_SPEC})
    return {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: want}}, "spec": spec}


def judge_service(spec: StableLayersRunSpec, owner: Owner) -> Obj:
    names = Names(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.judge, "judge"),
        "spec": {
            "selector": selector(owner.name, "judge"),
            "ports": [{"name": "http", "port": JUDGE_PORT, "targetPort": JUDGE_PORT}],
        },
    }
