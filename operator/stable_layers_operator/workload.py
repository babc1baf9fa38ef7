"""Pure pieces every child pod is built from: the model cache, security contexts, default
requests, pass-through env and volumes, the Job failure policy and Kueue queueing.

The builders in `children.py`, `evaluation.py` and `judge.py` compose these; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from stable_layers_operator.pods import PodExtras, ResourceRequirements
from stable_layers_operator.resource import StableLayersRunSpec

Obj = dict[str, Any]

APP_UID = 65532
"""The worker image's user (Dockerfile `APP_UID`)."""
TMP_DIR = "/tmp"
EMPTY_CACHE_DIR = "/var/cache/stable-layers"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DISRUPTION_CONDITION = "DisruptionTarget"


# ---------------------------------------------------------------- security


def worker_pod_security() -> Obj:
    """Pod-level context of trainer and evaluation pods: Pod Security `restricted`, the image's
    own user, and fsGroup so a fresh cache PVC is writable (OnRootMismatch: no recursive chown of
    a 41 GB cache on every start)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_UID,
        "fsGroup": APP_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def judge_pod_security() -> Obj:
    """vLLM's image runs as root (no USER), so `runAsNonRoot` would stop it from starting; the
    judge keeps the rest of the hardening. docs/cluster.md says what a `restricted` namespace needs."""
    return {"seccompProfile": {"type": "RuntimeDefault"}}


def judge_container_security() -> Obj:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def overridden(defaults: Obj, override: Obj | None) -> Obj:
    """Defaults with the user's keys replacing them (a key set to null removes the default)."""
    out = {**defaults, **(override or {})}
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------- weights cache and env


def cache_dir(spec: StableLayersRunSpec) -> str:
    return spec.model_cache.mount_path if spec.model_cache is not None else EMPTY_CACHE_DIR


def hf_home(spec: StableLayersRunSpec) -> str:
    return f"{cache_dir(spec).rstrip('/')}/huggingface"


def download_dir(spec: StableLayersRunSpec) -> str:
    """vLLM's `--download-dir`: the hub cache under HF_HOME, so trainer and judge share one layout."""
    return f"{hf_home(spec)}/hub"


def cache_volume(spec: StableLayersRunSpec) -> tuple[Obj, Obj]:
    """(volume, mount) of the model cache: the shared one, else a per-pod emptyDir (still needed:
    the root filesystem is read-only and the hub cache must be writable)."""
    cache = spec.model_cache
    if cache is None:
        volume: Obj = {"name": "model-cache", "emptyDir": {}}
        return volume, {"name": "model-cache", "mountPath": EMPTY_CACHE_DIR}
    if cache.claim_name is not None:
        source: Obj = {"persistentVolumeClaim": {"claimName": cache.claim_name, "readOnly": cache.read_only}}
    else:
        source = dict(cache.volume or {})
    mount: Obj = {"name": "model-cache", "mountPath": cache.mount_path}
    if cache.read_only:
        mount["readOnly"] = True
    return {"name": "model-cache", **source}, mount


def tmp_volume() -> tuple[Obj, Obj]:
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": TMP_DIR}


def cache_env(spec: StableLayersRunSpec) -> list[Obj]:
    """Where downloads go and the token they use; HOME and XDG caches (torch, triton, DeepSpeed
    extensions, vLLM) go to the writable /tmp."""
    env: list[Obj] = [
        {"name": "HOME", "value": TMP_DIR},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP_DIR}/.cache"},
        {"name": "HF_HOME", "value": hf_home(spec)},
    ]
    if spec.model_cache is not None and spec.model_cache.read_only:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    ref = spec.hf_token_secret_ref
    if ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def merge_env(base: list[Obj], extra: PodExtras) -> list[Obj]:
    """The operator's env, then the user's; a user variable replaces the operator's of that name
    (no duplicate names: Kubernetes would keep the last one silently)."""
    user = [v.model_dump(by_alias=True, exclude_none=True) for v in extra.env]
    names = {v["name"] for v in user}
    return [v for v in base if v["name"] not in names] + user


def extra_volumes(extra: PodExtras) -> tuple[list[Obj], list[Obj]]:
    volumes = [v.model_dump(by_alias=True, exclude_none=True) for v in extra.extra_volumes]
    mounts = []
    for m in extra.extra_volume_mounts:
        mount = m.model_dump(by_alias=True, exclude_none=True)
        if not mount.get("readOnly"):
            mount.pop("readOnly", None)
        mounts.append(mount)
    return volumes, mounts


# ---------------------------------------------------------------- resources


def default_requests(gpus: int, shared_cache: bool) -> dict[str, str]:
    """Requests for keys the user left out: enough that a GPU pod is never BestEffort and the
    scheduler accounts for the disk a per-pod model download fills (~41 GB base model)."""
    if gpus > 0:
        return {
            "cpu": str(4 * gpus),
            "memory": f"{32 * gpus}Gi",
            "ephemeral-storage": "20Gi" if shared_cache else "100Gi",
        }
    return {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "2Gi" if shared_cache else "4Gi"}


def resources_for(res: ResourceRequirements, gpus: int, defaults: dict[str, str] | None = None) -> Obj:
    requests = dict(res.requests)
    limits = dict(res.limits)
    for key, value in (defaults or {}).items():
        # A key with only a limit is requested at the limit by Kubernetes; a default request could exceed it.
        if key not in requests and key not in limits:
            requests[key] = value
    if gpus > 0:
        # Extended resources must have requests == limits; setting both says so explicitly.
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


# ---------------------------------------------------------------- Jobs: disruptions and queueing


def pod_failure_policy(disrupted: str) -> Obj:
    """`disrupted` is what a pod evicted by a drain, preemption or spot reclaim does: `FailJob` for
    the trainer (its ranks restart together, from the newest checkpoint, uncounted) or `Ignore` for
    an evaluation (the Job controller replaces the pod without counting it against backoffLimit).
    Exit codes get no rule: the workers exit 2 for a bad spec but also for a storage error, which a
    retry may well fix."""
    return {"rules": [{"action": disrupted, "onPodConditions": [{"type": DISRUPTION_CONDITION, "status": "True"}]}]}


def job_disrupted(job: Obj | None) -> bool:
    """The Job failed because the disruption rule of `pod_failure_policy` matched (the Job
    controller's Failed condition: reason PodFailurePolicy, message naming the pod condition)."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        # FailureTarget (Kubernetes >= 1.31) comes first and carries the same reason and message.
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            return cond.get("reason") == "PodFailurePolicy" and DISRUPTION_CONDITION in (cond.get("message") or "")
    return False


def queue_labels(spec: StableLayersRunSpec) -> dict[str, str]:
    return {KUEUE_QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}


def queued(job: Obj | None) -> bool:
    """A Job waiting for admission: created suspended for Kueue (or suspended again by a Kueue
    preemption). The operator never unsuspends it; Kueue does, when the whole gang fits."""
    return bool(job) and bool((job or {}).get("spec", {}).get("suspend"))
