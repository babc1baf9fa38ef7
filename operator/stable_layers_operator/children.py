"""Pure functions: a run's spec → the Kubernetes objects the operator creates.

No I/O and no kopf here, so every object can be unit-tested and schema-validated, and the system
test can run the trainer pod's exact command line and environment (`trainer_process`,
`resolve_env`) as local processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from stable_layers.spec import RunSpec
from stable_layers_operator import workload as wl
from stable_layers_operator.pods import PodExtras
from stable_layers_operator.resource import API_VERSION, KIND, StableLayersRunSpec
from stable_layers_operator.workload import resources_for

CONFIG_DIR = "/etc/stable-layers"
RUN_FILE = f"{CONFIG_DIR}/run.yaml"
JUDGE_PORT = 8000
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RUN_LABEL = "stablelayers.io/run"
COMPONENT_LABEL = "app.kubernetes.io/component"
ATTEMPT_LABEL = "stablelayers.io/attempt"
STEP_LABEL = "stablelayers.io/step"
Obj = dict[str, Any]


# ---------------------------------------------------------------- names and metadata


@dataclass(frozen=True)
class Names:
    """Deterministic child names: the same run always maps to the same objects, which is what
    makes re-running a handler (or restarting the operator) create nothing twice."""

    run: str

    @property
    def config_map(self) -> str:
        return f"{self.run}-config"

    @property
    def judge(self) -> str:
        return f"{self.run}-judge"

    @property
    def trainer_service(self) -> str:
        return f"{self.run}-trainer"

    def trainer_job(self, attempt: int) -> str:
        return f"{self.run}-trainer-{attempt}"

    def eval_job(self, step: int) -> str:
        return f"{self.run}-eval-{step:06d}"


def labels(run: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "stable-layers",
        "app.kubernetes.io/instance": run,
        "app.kubernetes.io/managed-by": "stable-layers-operator",
        COMPONENT_LABEL: component,
        RUN_LABEL: run,
    }


def selector(run: str, component: str) -> dict[str, str]:
    return {RUN_LABEL: run, COMPONENT_LABEL: component}


@dataclass(frozen=True)
class Owner:
    """The run a child belongs to; `uid` makes the ownerReference valid for garbage collection."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta.get("uid") or "")


def metadata(owner: Owner, name: str, component: str, extra_labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner.name, component), **(extra_labels or {})},
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


# ---------------------------------------------------------------- the run file


def judge_needed(spec: StableLayersRunSpec) -> bool:
    """The vLLM judge is deployed only for the OpenAI-compatible VLM reward."""
    return spec.run.reward.kind == "openai" and spec.judge.enabled


def judge_url(names: Names, namespace: str) -> str:
    return f"http://{names.judge}.{namespace}.svc:{JUDGE_PORT}/v1"


def pod_run_spec(spec: StableLayersRunSpec, names: Names, namespace: str) -> RunSpec:
    """The RunSpec the pods read: the user's, with what the cluster decides filled in (where the
    run lives, the judge's address, the ZeRO stage)."""
    data = spec.run.to_dict()
    data["checkpoint"]["uri"] = spec.storage.uri
    if spec.trainer.zero_stage is not None:
        data["distributed"]["zeroStage"] = spec.trainer.zero_stage
    if judge_needed(spec):
        data["reward"]["openai"]["baseUrl"] = judge_url(names, namespace)
        data["reward"]["openai"]["model"] = spec.judge.served_model_name
    evaluation = evaluation_settings(spec)
    data["eval"]["everySteps"] = evaluation[0]
    data["eval"]["data"] = evaluation[1]
    return RunSpec.model_validate(data)


def evaluation_settings(spec: StableLayersRunSpec) -> tuple[int, str | None]:
    """(everySteps, data): `spec.evaluation` wins, `spec.run.eval` is the fallback."""
    every = spec.evaluation.every_steps if spec.evaluation.every_steps is not None else spec.run.eval.every_steps
    data = spec.evaluation.data if spec.evaluation.data is not None else spec.run.eval.data
    return every, data


def config_map(spec: StableLayersRunSpec, owner: Owner) -> Obj:
    names = Names(owner.name)
    run_yaml = pod_run_spec(spec, names, owner.namespace).to_yaml()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names.config_map, "config"),
        "data": {"run.yaml": run_yaml},
    }


# ---------------------------------------------------------------- shared pod pieces


def tolerations(items: list[Any]) -> list[Obj]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in items]


def storage_env(spec: StableLayersRunSpec) -> list[Obj]:
    """S3 settings the worker's boto3 reads; keys come from the Secret, never from the spec."""
    env: list[Obj] = [
        {"name": "AWS_REGION", "value": spec.storage.region},
        {"name": "AWS_DEFAULT_REGION", "value": spec.storage.region},
    ]
    if spec.storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.storage.endpoint})
    ref = spec.storage.secret_ref
    if ref is not None:
        env += [
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_id_key}},
            },
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_access_key_key}},
            },
        ]
    return env


def worker_volumes(spec: StableLayersRunSpec, names: Names, extra: PodExtras) -> tuple[list[Obj], list[Obj]]:
    """The run file, shared memory, the writable /tmp and model cache (the root filesystem is
    read-only), then the component's `extraVolumes`."""
    cache, cache_mount = wl.cache_volume(spec)
    tmp, tmp_mount = wl.tmp_volume()
    volumes = [
        {"name": "run-config", "configMap": {"name": names.config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.trainer.shm_size}},
        tmp,
        cache,
    ]
    mounts = [
        {"name": "run-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        tmp_mount,
        cache_mount,
    ]
    more_volumes, more_mounts = wl.extra_volumes(extra)
    return volumes + more_volumes, mounts + more_mounts


def worker_env(spec: StableLayersRunSpec, extra: PodExtras) -> list[Obj]:
    """Storage and cache env of a worker pod, then the component's own `env`."""
    return wl.merge_env([*storage_env(spec), *wl.cache_env(spec)], extra)


def pod_common(spec: StableLayersRunSpec, extra: PodExtras) -> Obj:
    pod: Obj = {
        "restartPolicy": "Never",
        "securityContext": wl.overridden(wl.worker_pod_security(), extra.security_context),
    }
    if spec.trainer.service_account:
        pod["serviceAccountName"] = spec.trainer.service_account
    if spec.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in spec.images.pull_secrets]
    return pod


def worker_container_security(extra: PodExtras) -> Obj:
    return wl.overridden(wl.worker_container_security(), extra.container_security_context)


def job_spec_extras(spec: StableLayersRunSpec) -> Obj:
    """`suspend: true` for a queued run: Kueue admits (unsuspends) the Job when its whole gang fits."""
    return {"suspend": True} if spec.queue_name else {}


# ---------------------------------------------------------------- trainer


@dataclass(frozen=True)
class Process:
    """What one container runs: argv and its env (Kubernetes EnvVar objects)."""

    command: list[str]
    env: list[Obj]


def trainer_process(spec: StableLayersRunSpec, owner: Owner, attempt: int) -> Process:
    """The trainer pod's command and environment: the one source of truth for both the Job and
    the system test. Rank comes from the Job completion index (`NODE_RANK`), rank 0's stable DNS
    name `<job>-0.<headless service>` is the rendezvous address."""
    names = Names(owner.name)
    job = names.trainer_job(attempt)
    command = [
        "stable-layers",
        "train",
        RUN_FILE,
        "--out",
        spec.storage.uri,
        "--resume",
        "--nproc-per-node",
        str(max(spec.trainer.gpus_per_node, 1)),
        "--metrics-port",
        str(spec.trainer.metrics_port),
    ]
    env: list[Obj] = [
        {"name": "NNODES", "value": str(spec.trainer.nodes)},
        {
            "name": "NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "MASTER_ADDR", "value": f"{job}-0.{names.trainer_service}"},
        {"name": "MASTER_PORT", "value": str(spec.trainer.master_port)},
        {"name": "STABLE_LAYERS_RUN", "value": owner.name},
        {"name": "STABLE_LAYERS_NAMESPACE", "value": owner.namespace},
        {"name": "STABLE_LAYERS_ATTEMPT", "value": str(attempt)},
        *worker_env(spec, spec.trainer),
    ]
    return Process(command=command, env=env)


def resolve_env(
    env: list[Obj],
    *,
    completion_index: int,
    secrets: dict[str, dict[str, str]],
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """Evaluate EnvVar objects the way the kubelet does for one pod (values, the completion-index
    annotation, Secret keys), for running a pod's process locally. Unknown sources raise."""
    out: dict[str, str] = {}
    for var in env:
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if COMPLETION_INDEX_ANNOTATION not in path:
                raise ValueError(f"env {var['name']}: cannot resolve fieldRef {path} locally")
            out[var["name"]] = str(completion_index)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            out[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise ValueError(f"env {var['name']}: unsupported source {sorted(source)}")
    out.update(overrides or {})
    return out


def trainer_service(spec: StableLayersRunSpec, owner: Owner) -> Obj:
    names = Names(owner.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, names.trainer_service, "trainer"),
        "spec": {
            "clusterIP": "None",
            # Ranks rendezvous before any pod is Ready; DNS must resolve them anyway.
            "publishNotReadyAddresses": True,
            "selector": selector(owner.name, "trainer"),
            "ports": [
                {"name": "rendezvous", "port": spec.trainer.master_port, "targetPort": spec.trainer.master_port},
                {"name": "metrics", "port": spec.trainer.metrics_port, "targetPort": spec.trainer.metrics_port},
            ],
        },
    }


def trainer_job(spec: StableLayersRunSpec, owner: Owner, attempt: int) -> Obj:
    """Indexed Job, one pod per node, no pod-level retries: one failed rank fails the Job and the
    operator restarts the whole trainer from the newest checkpoint (a lone restarted rank would
    hang the others' collectives)."""
    names = Names(owner.name)
    process = trainer_process(spec, owner, attempt)
    volumes, mounts = worker_volumes(spec, names, spec.trainer)
    extra = {ATTEMPT_LABEL: str(attempt)}
    gpus = spec.trainer.gpus_per_node
    container: Obj = {
        "name": "trainer",
        "image": spec.images.worker,
        "imagePullPolicy": spec.images.pull_policy,
        "command": process.command,
        "env": process.env,
        "ports": [
            {"name": "rendezvous", "containerPort": spec.trainer.master_port},
            {"name": "metrics", "containerPort": spec.trainer.metrics_port},
        ],
        "resources": resources_for(
            spec.trainer.resources, gpus, wl.default_requests(gpus, shared_cache=spec.model_cache is not None)
        ),
        "volumeMounts": mounts,
        "securityContext": worker_container_security(spec.trainer),
    }
    pod: Obj = {
        **pod_common(spec, spec.trainer),
        "subdomain": names.trainer_service,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.trainer.node_selector:
        pod["nodeSelector"] = dict(spec.trainer.node_selector)
    if spec.trainer.tolerations:
        pod["tolerations"] = tolerations(spec.trainer.tolerations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.trainer_job(attempt), "trainer", {**extra, **wl.queue_labels(spec)}),
        "spec": {
            **job_spec_extras(spec),
            "completionMode": "Indexed",
            "completions": spec.trainer.nodes,
            "parallelism": spec.trainer.nodes,
            "backoffLimit": 0,
            # A disrupted rank fails the whole Job at once (its peers would hang in collectives);
            # the operator restarts it from the newest checkpoint without counting a failure.
            "podFailurePolicy": wl.pod_failure_policy("FailJob"),
            "template": {
                "metadata": {
                    "labels": {**labels(owner.name, "trainer"), **extra},
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.trainer.metrics_port),
                    },
                },
                "spec": pod,
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's run.yaml) as readable `|` blocks."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(objects: list[Obj]) -> str:
    """Objects as one multi-document YAML stream."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False)
