"""The vLLM judge: a Deployment of vLLM's OpenAI server and its Service (shared/docs/infra.md §E)."""

from __future__ import annotations

import json

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


def judge_deployment(spec: StableLayersRunSpec, owner: Owner) -> Obj:
    names = Names(owner.name)
    j = spec.judge
    gpus = j.gpus if j.gpus is not None else j.tensor_parallel
    probe = {"httpGet": {"path": "/health", "port": JUDGE_PORT}}
    volumes: list[Obj] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    mounts: list[Obj] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if j.model_volume:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": j.model_volume, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    env = storage_env(spec) if j.model.startswith("s3://") else []
    container: Obj = {
        "name": "vllm",
        "image": j.image,
        "imagePullPolicy": spec.images.pull_policy,
        "command": ["vllm", "serve"],
        "args": judge_args(spec),
        "ports": [{"name": "http", "containerPort": JUDGE_PORT}],
        "resources": resources_for(j.resources, gpus),
        "volumeMounts": mounts,
        # Model loading takes minutes; liveness/readiness only start after the startup probe.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": max(j.startup_seconds // 10, 1)},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
    }
    if env:
        container["env"] = env
    pod: Obj = {"containers": [container], "volumes": volumes}
    if spec.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.images.pull_secrets]
    if j.node_selector:
        pod["nodeSelector"] = dict(j.node_selector)
    if j.tolerations:
        pod["tolerations"] = tolerations(j.tolerations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, names.judge, "judge"),
        "spec": {
            "replicas": j.replicas,
            # A rolling update would need twice the GPUs; the judge is stateless, so replace it.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(owner.name, "judge")},
            "template": {"metadata": {"labels": labels(owner.name, "judge")}, "spec": pod},
        },
    }


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
