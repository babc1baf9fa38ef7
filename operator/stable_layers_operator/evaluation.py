"""Evaluation Jobs: `stable-layers eval` on one committed checkpoint."""

from __future__ import annotations

from stable_layers.storage import CHECKPOINTS, EVAL, step_name
from stable_layers_operator import workload as wl
from stable_layers_operator.children import (
    RUN_FILE,
    STEP_LABEL,
    Names,
    Obj,
    Owner,
    Process,
    evaluation_settings,
    job_spec_extras,
    labels,
    metadata,
    pod_common,
    resources_for,
    tolerations,
    worker_container_security,
    worker_env,
    worker_volumes,
)
from stable_layers_operator.resource import StableLayersRunSpec


def eval_process(spec: StableLayersRunSpec, step: int) -> Process:
    _, data = evaluation_settings(spec)
    if not data:
        raise ValueError("no evaluation data: set spec.evaluation.data or spec.run.eval.data")
    root = spec.storage.uri.rstrip("/")
    command = [
        "stable-layers",
        "eval",
        RUN_FILE,
        "--data",
        data,
        "--out",
        f"{root}/{EVAL}/{step_name(step)}",
        "--checkpoint",
        f"{root}/{CHECKPOINTS}/{step_name(step)}",
    ]
    return Process(command=command, env=worker_env(spec, spec.evaluation))


def eval_gpus(spec: StableLayersRunSpec) -> int:
    if spec.evaluation.gpus is not None:
        return spec.evaluation.gpus
    return 1 if spec.trainer.gpus_per_node > 0 else 0


def eval_job(spec: StableLayersRunSpec, owner: Owner, step: int) -> Obj:
    names = Names(owner.name)
    process = eval_process(spec, step)
    volumes, mounts = worker_volumes(spec, names, spec.evaluation)
    extra = {STEP_LABEL: str(step)}
    gpus = eval_gpus(spec)
    defaults = wl.default_requests(gpus, shared_cache=spec.model_cache is not None)
    pod: Obj = {
        **pod_common(spec, spec.evaluation),
        "containers": [
            {
                "name": "eval",
                "image": spec.images.worker,
                "imagePullPolicy": spec.images.pull_policy,
                "command": process.command,
                "env": process.env,
                "resources": resources_for(spec.evaluation.resources, gpus, defaults),
                "volumeMounts": mounts,
                "securityContext": worker_container_security(spec.evaluation),
            }
        ],
        "volumes": volumes,
    }
    if eval_gpus(spec) > 0 and spec.trainer.node_selector:
        pod["nodeSelector"] = dict(spec.trainer.node_selector)
    if eval_gpus(spec) > 0 and spec.trainer.tolerations:
        pod["tolerations"] = tolerations(spec.trainer.tolerations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.eval_job(step), "eval", {**extra, **wl.queue_labels(spec)}),
        "spec": {
            **job_spec_extras(spec),
            "backoffLimit": spec.evaluation.backoff_limit,
            # An evicted evaluation pod is replaced without using up a retry.
            "podFailurePolicy": wl.pod_failure_policy("Ignore"),
            "template": {"metadata": {"labels": {**labels(owner.name, "eval"), **extra}}, "spec": pod},
        },
    }


def unmounted_data(spec: StableLayersRunSpec) -> str | None:
    """A warning when the evaluation data is an absolute `crello:` path inside no volume of the
    evaluation pods (the pods would only find it if the image itself carried it)."""
    _, data = evaluation_settings(spec)
    kind, _, path = (data or "").partition(":")
    if kind != "crello" or not path.startswith("/"):
        return None
    mounts = [m.mount_path for m in spec.evaluation.extra_volume_mounts] + [wl.cache_dir(spec)]
    if any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
        return None
    return (
        f"evaluation data {data}: {path} is inside no volume of the evaluation pods, so every evaluation Job "
        "fails unless the worker image holds it; mount it with spec.evaluation.extraVolumes/extraVolumeMounts"
    )


def report_key(step: int) -> str:
    """Key of an evaluation's report.json relative to the run URI."""
    return f"{EVAL}/{step_name(step)}/report.json"
