"""The `StableLayersRun` custom resource: spec and status as pydantic models.

`spec.run` IS `stable_layers.spec.RunSpec` (imported, never copied); the other spec sections say
what a cluster needs to run it. The CRD's OpenAPI schema is generated from these models
(`crd.py`), so a field added here or in `RunSpec` reaches `kubectl explain` with its docstring.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from stable_layers.spec import RunSpec, Strict, format_validation_error
from stable_layers_operator.pods import (
    DNS_1035_LABEL,
    DNS_SUBDOMAIN,
    ModelCacheSpec,
    NonEmpty,
    PodExtras,
    Quantity,
    ResourceRequirements,
    SecretKeyRef,
    Toleration,
)

GROUP = "stablelayers.io"
VERSION = "v1alpha1"
KIND = "StableLayersRun"
PLURAL = "stablelayersruns"
SINGULAR = "stablelayersrun"
SHORT_NAMES = ["slr"]
API_VERSION = f"{GROUP}/{VERSION}"

MAX_NAME_LENGTH = 40
"""Longest run name: child names add up to 23 characters (`-eval-000600`, `-trainer-r12-0` as a pod
hostname) and Services/Job pods need DNS labels of at most 63."""

WORKER_IMAGE = "ghcr.io/stable-layers/worker:0.1.0"
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
"""The vLLM release the reward client was checked against (infra.md §E)."""


class ImageDefaults:
    """Images used when a run names none: the operator's own settings (Helm values
    `images.worker` / `images.judge` → `--worker-image` / `--judge-image`), falling back to the pins
    above. Deliberately not CRD schema defaults: the API server would copy a schema default into every
    stored run, and a cluster admin could then never move all runs to a new pinned image."""

    worker: str = WORKER_IMAGE
    judge: str = VLLM_IMAGE

    @classmethod
    def configure(cls, *, worker: str | None = None, judge: str | None = None) -> None:
        cls.worker = worker or WORKER_IMAGE
        cls.judge = judge or VLLM_IMAGE


class ImagesSpec(Strict):
    worker: str = Field(default_factory=lambda: ImageDefaults.worker, min_length=1, max_length=1024)
    """Image with the `stable-layers` CLI (torch, diffusers, DeepSpeed) for trainer and eval pods.
    Default: the operator's `--worker-image` (Helm value `images.worker`), else the release image of
    this operator version."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy of every container the operator creates. Default IfNotPresent."""
    pull_secrets: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]] = Field(
        default_factory=list
    )
    """Names of image pull Secrets in the run's namespace. Default none."""


class TrainerSpec(PodExtras):
    nodes: int = Field(1, ge=1, le=256)
    """Trainer pods (one per node); the Indexed Job's completions and parallelism. Default 1."""
    gpus_per_node: int = Field(8, ge=0, le=16)
    """GPUs per trainer pod (`nvidia.com/gpu` limit) and processes per pod (`--nproc-per-node`);
    0 runs one CPU process per pod (smoke tests). Default 8."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU/memory requests and limits of each trainer pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the trainer pods require."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the trainer pods."""
    zero_stage: int | None = Field(None, ge=0, le=3)
    """DeepSpeed ZeRO stage; when set it overrides `run.distributed.zeroStage` in the pods' run
    file. Default: the run's value (2)."""
    master_port: int = Field(29500, ge=1024, le=65535)
    """Rendezvous port of rank 0 (`MASTER_PORT`). Default 29500 (torch's)."""
    metrics_port: int = Field(9400, ge=1024, le=65535)
    """Port of the trainer's Prometheus exporter. Default 9400."""
    shm_size: Quantity = "64Gi"
    """Size limit of the memory-backed /dev/shm (NCCL and data loader workers need more than the
    container runtime's 64 MB). Default 64Gi."""
    service_account: str | None = Field(None, pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)
    """ServiceAccount of trainer and eval pods (e.g. one bound to an S3 role). Default the
    namespace's default account."""


class JudgeSpec(PodExtras):
    enabled: bool = True
    """Deploy a vLLM judge when `run.reward.kind` is `openai`. False: the trainer uses
    `run.reward.openai.baseUrl` as written (a judge served elsewhere). Default true."""
    model: NonEmpty = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Model path served by vLLM: a hub id (needs egress or a cache), a local path on `modelVolume`,
    or `s3://...` with `--load-format runai_streamer` in `extraArgs`. Default Qwen2.5-VL-7B-Instruct."""
    served_model_name: str = Field("judge", pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./]*$", max_length=253)
    """`--served-model-name`; the trainer's `reward.openai.model` is set to it. Default `judge`."""
    image: str = Field(default_factory=lambda: ImageDefaults.judge, min_length=1, max_length=1024)
    """vLLM OpenAI server image. Default: the operator's `--judge-image` (Helm value `images.judge`,
    pinned), else the vLLM release the reward client was checked on (`vllm/vllm-openai:v0.33.0`)."""
    tensor_parallel: int = Field(1, ge=1, le=16)
    """`--tensor-parallel-size` (1 for 7–8B judges; 72B in bf16 needs 4 H100s). Default 1."""
    gpus: int | None = Field(None, ge=1, le=16)
    """GPUs per judge pod. Default: `tensorParallel`."""
    replicas: int = Field(1, ge=1, le=64)
    """Judge pods behind the Service. Default 1."""
    max_model_len: int = Field(16384, ge=512)
    """`--max-model-len`: prompt plus answer tokens; a grid of 8 panels is ~2k visual tokens.
    Default 16384."""
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"image": 4})
    """`--limit-mm-per-prompt` as JSON: images per request (a stage-1 panel and the stage-2 grid
    are one image each; the input image may be sent alongside). Default `{image: 4}`."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """`--gpu-memory-utilization`. Default 0.9 (vLLM's)."""
    extra_args: list[str] = Field(default_factory=list)
    """More vLLM arguments, appended verbatim (e.g. `--load-format`, `runai_streamer`)."""
    model_volume: str | None = Field(None, pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)
    """Name of a PersistentVolumeClaim mounted read-only at /models holding the weights. Default none."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU/memory of each judge pod; GPUs come from `gpus`."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the judge pods require."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of the judge pods."""
    startup_seconds: int = Field(1800, ge=60)
    """How long the startup probe waits for the model to load before the pod is restarted
    (vLLM kills pods whose probes fire before loading ends). Default 1800."""


class EvaluationSpec(PodExtras):
    every_steps: int | None = Field(None, ge=0)
    """Evaluate the checkpoint every this many optimizer steps (0: only the final one).
    Default: `run.eval.everySteps`."""
    data: str | None = Field(None, min_length=1, max_length=4096)
    """Evaluation data for `stable-layers eval --data` (e.g. `synthetic:heldout`,
    `crello:/data/crello`). Default: `run.eval.data`; with neither, no evaluation runs."""
    gpus: int | None = Field(None, ge=0, le=16)
    """GPUs of an evaluation pod. Default 1 when the trainer uses GPUs, else 0."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """CPU/memory of an evaluation pod."""
    backoff_limit: int = Field(2, ge=0, le=10)
    """Pod retries of one evaluation Job. Default 2."""


class SecretRef(Strict):
    """A Secret in the run's namespace holding S3 credentials (never put keys in the spec)."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Secret name."""
    access_key_id_key: str = Field("AWS_ACCESS_KEY_ID", min_length=1, max_length=253)
    """Key of the access key id in the Secret. Default AWS_ACCESS_KEY_ID."""
    secret_access_key_key: str = Field("AWS_SECRET_ACCESS_KEY", min_length=1, max_length=253)
    """Key of the secret access key in the Secret. Default AWS_SECRET_ACCESS_KEY."""


class StorageSpec(Strict):
    uri: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
    """`s3://bucket/prefix` where the run lives: checkpoints, rollouts, progress.json, eval reports
    (docs/internals.md "Storage"). Overrides `run.checkpoint.uri`."""
    endpoint: str | None = None
    """Endpoint of an S3-compatible store (MinIO, Ceph), e.g. `http://minio.minio:9000`.
    Default AWS."""
    region: str = Field("us-east-1", min_length=1, max_length=64)
    """Region. Default us-east-1."""
    secret_ref: SecretRef | None = None
    """Credentials Secret. Default none: pods use their ServiceAccount/node identity."""
    delete_on_run_deletion: bool = False
    """Delete everything under `uri` when the StableLayersRun is deleted. Needs `secretRef` (the
    deletion uses the run's own credentials, never the operator's) and a prefix (`s3://bucket/x`,
    never a whole bucket). Default false: trained checkpoints outlive the resource."""

    def deletion_problem(self) -> str | None:
        """Why `deleteOnRunDeletion` must not act on this storage, or None."""
        if self.secret_ref is None:
            return (
                "storage.deleteOnRunDeletion needs storage.secretRef: the operator deletes run data only "
                "with the run's own credentials"
            )
        if not self.uri.removeprefix("s3://").partition("/")[2].strip("/"):
            return "storage.deleteOnRunDeletion needs a prefix in storage.uri (s3://bucket/prefix), not a whole bucket"
        return None

    @model_validator(mode="after")
    def _safe_deletion(self) -> StorageSpec:
        problem = self.delete_on_run_deletion and self.deletion_problem()
        if problem:
            raise ValueError(problem)
        return self


class StableLayersRunSpec(Strict):
    """A Flow-GRPO fine-tuning run of Qwen-Image-Layered on a Kubernetes cluster."""

    run: RunSpec = Field(default_factory=RunSpec)
    """The training run itself: the same schema as `stable-layers train`'s run file."""
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    """Container images."""
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    """Trainer pods: nodes, GPUs, placement."""
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    """The vLLM judge, deployed when `run.reward.kind` is `openai`."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation Jobs on checkpoints."""
    storage: StorageSpec
    """S3 location and credentials of the run."""
    model_cache: ModelCacheSpec | None = None
    """A volume (PVC or any volume source) mounted in every trainer, evaluation and judge pod that
    holds downloaded weights (`HF_HOME`, vLLM's `--download-dir`). Default none: each pod downloads
    into its own emptyDir, every attempt again."""
    hf_token_secret_ref: SecretKeyRef | None = None
    """A Secret key holding a Hugging Face token (`HF_TOKEN` in every pod) for gated or private
    models. Default none."""
    queue_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)
    """A Kueue LocalQueue: trainer and evaluation Jobs get the `kueue.x-k8s.io/queue-name` label and
    are created suspended, so Kueue admits each Job's pods as one gang when the quota fits
    (docs/cluster.md, "Queueing"). Default none (Jobs start at once)."""
    suspend: bool = False
    """Stop the run: children are deleted; setting it back to false resumes from the newest
    committed checkpoint. Default false."""
    backoff_limit: int = Field(3, ge=0, le=100)
    """Whole-trainer restarts after a failed trainer pod before the run is Failed. Default 3."""
    active_deadline_seconds: int | None = Field(None, ge=1)
    """Seconds from the run's start after which it is Failed (reason DeadlineExceeded), suspended
    time included. Default none."""
    progress_deadline_seconds: int | None = Field(None, ge=1)
    """Seconds without a new optimizer step (counted from the start, a resume or a restart, and
    from every new step) after which the run is Failed with reason ProgressDeadlineExceeded, like a
    Deployment's. Include the judge's and the model's loading time. Default none."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    """Delete the StableLayersRun (and so its children) this many seconds after it Succeeded or
    Failed. Default none (kept)."""

    @model_validator(mode="after")
    def _cluster_consistency(self) -> StableLayersRunSpec:
        if self.run.reward.kind == "transformers" and self.trainer.gpus_per_node == 0:
            raise ValueError(
                "run.reward.kind 'transformers' runs a VLM in the trainer pod and needs trainer.gpusPerNode >= 1"
            )
        if self.judge.gpus is not None and self.judge.gpus < self.judge.tensor_parallel:
            raise ValueError(
                f"judge.gpus ({self.judge.gpus}) must be >= judge.tensorParallel ({self.judge.tensor_parallel})"
            )
        return self


class Condition(Strict):
    """A standard condition (metav1.Condition without observedGeneration per condition)."""

    type: str
    """ChildRejected, ChildConflict, PodsReady, JudgeReady, Training, Evaluating, Suspended, Succeeded or
    Failed."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """CamelCase reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str
    """RFC 3339 time the status last changed."""


class RewardStatus(Strict):
    mean: float | None = None
    """Mean reward of the last optimizer step."""
    std: float | None = None
    """Standard deviation of all rewards of the last step."""
    spread: float | None = None
    """Mean within-group reward std of the last step: GRPO's signal; near 0 means no gradient."""
    zero_std_ratio: float | None = None
    """Share of groups whose rewards were all equal."""


class CheckpointStatus(Strict):
    step: int
    """Optimizer step of the newest committed checkpoint."""
    uri: str
    """Its URI."""


class EvaluationStatus(Strict):
    step: int
    """Checkpoint step evaluated."""
    job: str
    """Evaluation Job name."""
    phase: Literal["Running", "Succeeded", "Failed"]
    """Job outcome."""
    final: bool = False
    """The end-of-run evaluation."""
    report: str | None = None
    """URI of report.json."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Headline numbers from report.json."""


class ChildrenStatus(Strict):
    config_map: str | None = None
    """ConfigMap holding run.yaml."""
    judge_deployment: str | None = None
    """vLLM Deployment."""
    judge_service: str | None = None
    """vLLM Service."""
    trainer_job: str | None = None
    """Current trainer Indexed Job."""
    trainer_service: str | None = None
    """Headless rendezvous Service."""


class StableLayersRunStatus(Strict):
    observed_generation: int | None = None
    """metadata.generation last reconciled."""
    phase: (
        Literal["Pending", "Starting", "Queued", "Training", "Evaluating", "Suspended", "Succeeded", "Failed"] | None
    ) = None
    """Pending, Starting (judge loading), Queued (the trainer Job waits for Kueue admission), Training, Evaluating (final evaluation), Suspended,
    Succeeded or Failed."""
    message: str | None = None
    """Why the run is in its phase."""
    conditions: list[Condition] = Field(default_factory=list)
    """Standard conditions."""
    step: int | None = None
    """Last optimizer step reported by the trainer."""
    max_steps: int | None = None
    """Steps of the whole run."""
    loss: float | None = None
    """Loss of the last step."""
    reward: RewardStatus | None = None
    """Reward statistics of the last step."""
    last_checkpoint: CheckpointStatus | None = None
    """Newest committed checkpoint."""
    restarts: int = 0
    """Whole-trainer restarts after failures so far (at most `backoffLimit`)."""
    disruptions: int = 0
    """Whole-trainer restarts after a pod was disrupted (drain, preemption, spot reclaim: the
    `DisruptionTarget` condition); not counted against `backoffLimit`."""
    attempt: int = 0
    """Trainer Job generation, incremented on every restart and every resume: the current
    trainer Job is `<run>-trainer-<attempt>`."""
    trainer_phase: str | None = None
    """`phase` of the last progress record (Running, Succeeded, Failed)."""
    training_complete: bool = False
    """The trainer Job completed; only evaluation may be left."""
    start_time: str | None = None
    """When the run first started (RFC 3339)."""
    completion_time: str | None = None
    """When it Succeeded or Failed."""
    progress_updated_at: str | None = None
    """`updatedAt` of the last progress.json read."""
    last_progress_time: str | None = None
    """When the step last changed (or the trainer last (re)started): the progress deadline's start."""
    children: ChildrenStatus = Field(default_factory=ChildrenStatus)
    """Names of the objects the operator made."""
    evaluations: list[EvaluationStatus] = Field(default_factory=list)
    """Evaluation Jobs and their headline numbers, oldest first."""


def parse_run(spec: dict[str, Any] | None, source: str = "spec") -> StableLayersRunSpec:
    """Validate a resource's spec, raising ValueError whose message names each bad field
    (`spec.run.grpo.groupSize: ...`)."""
    try:
        return StableLayersRunSpec.model_validate(spec or {})
    except ValidationError as err:
        raise ValueError(
            format_validation_error(err, source, StableLayersRunSpec).replace(f"{source}: ", f"{source}.")
        ) from None


RUN_NAME_MESSAGE = (
    f"metadata.name must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (lowercase letters, "
    "digits and '-', starting with a letter): the run's Services and Jobs are named after it"
)


def check_run_name(name: Any) -> None:
    """Raise ValueError (the CRD's own message) unless `name` can name the run's children."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not re.fullmatch(DNS_1035_LABEL, name):
        raise ValueError(f"{RUN_NAME_MESSAGE} (got {name!r})")
