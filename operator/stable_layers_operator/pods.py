"""Spec models of what the run's pods are made of: resources, tolerations, env, volumes, the
model cache and security contexts.

Each rule the API server (or the child objects) would enforce later is stated twice, once for the
operator and `render` (pydantic) and once for admission (a schema `pattern` or a CEL rule in
`x-kubernetes-validations`, copied into the CRD by `crd.py`), so `kubectl apply` refuses a run whose
children Kubernetes would refuse, with the field named.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from stable_layers.spec import Strict

QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
"""A non-negative Kubernetes quantity (apimachinery's `resource.Quantity`): a number with an
optional binary (`Gi`), decimal (`G`, `m`) or exponent (`e3`) suffix. `800 GB`, `64GB`, `lots` fail."""
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""Service names: a DNS-1035 label (starts with a letter)."""
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
"""Label and taint keys: an optional DNS-subdomain prefix and a name of letters, digits, `-_.`."""
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ABSOLUTE_PATH = r"^/[^:]*$"

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]
DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class ResourceRequirements(Strict):
    """A container's compute resources, as in a Pod spec (quantities as strings: `"16"`, `64Gi`).
    A key given in neither `requests` nor `limits` gets the component's default request (so no
    GPU pod is BestEffort); a key with only a limit is requested at that limit (Kubernetes' rule)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    """Minimum resources, e.g. `{cpu: "16", memory: 200Gi, ephemeral-storage: 50Gi}`. GPUs are added
    from `gpusPerNode`/`gpus`."""
    limits: dict[str, Quantity] = Field(default_factory=dict)
    """Maximum resources. GPUs are added from `gpusPerNode`/`gpus`."""


TOLERATION_RULES = [
    (
        "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
        "a toleration with operator Exists takes no value (use operator Equal to match a value)",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds only applies to effect NoExecute",
    ),
    (
        "(has(self.key) && size(self.key) > 0) || (has(self.operator) && self.operator == 'Exists')",
        "a toleration without a key must use operator Exists (it then matches every taint)",
    ),
]
"""Kubernetes' own toleration rules (core/v1 validation) as CEL, with the absent `operator` meaning
Equal, as in a Pod."""


def _cel(rules: list[tuple[str, str]]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class Toleration(Strict):
    """A Pod toleration (GPU nodes are usually tainted)."""

    model_config = ConfigDict(json_schema_extra=_cel(TOLERATION_RULES))

    key: str | None = Field(None, pattern=QUALIFIED_NAME, max_length=316)
    """Taint key, e.g. `nvidia.com/gpu`; empty (with operator Exists) matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """`Equal` (the taint's value must be `value`) or `Exists` (any value; then no `value`).
    Default Equal, as in a Pod."""
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE)
    """Taint value for operator Equal (a label value)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty tolerates all effects."""
    toleration_seconds: int | None = Field(None, ge=0)
    """For effect NoExecute only: how long the pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(TOLERATION_RULES[0][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(TOLERATION_RULES[1][1])
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_RULES[2][1])
        return self


class EnvVar(Strict):
    """An environment variable of a container, as in a Pod (`value` or `valueFrom`)."""

    model_config = ConfigDict(
        json_schema_extra=_cel([("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both")])
    )

    name: str = Field(pattern=ENV_NAME, max_length=256)
    """Variable name, e.g. `NCCL_SOCKET_IFNAME`."""
    value: str | None = None
    """Its value."""
    value_from: dict[str, Any] | None = None
    """A source, as in a Pod: `{secretKeyRef: {name, key}}`, `{configMapKeyRef: …}`, `{fieldRef: …}`."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class Volume(BaseModel):
    """A Pod volume: `name` plus one volume source exactly as in a Pod spec, e.g.
    `{name: crello, persistentVolumeClaim: {claimName: crello, readOnly: true}}`."""

    model_config = ConfigDict(
        extra="allow",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """Volume name, referenced by `extraVolumeMounts`."""

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = sorted((self.model_extra or {}).keys())
        if len(sources) != 1:
            raise ValueError(f"volume {self.name!r} needs exactly one volume source (got {sources or 'none'})")
        return self


class VolumeMount(Strict):
    """Where a volume appears in the container."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """Name of a volume in `extraVolumes`."""
    mount_path: str = Field(pattern=ABSOLUTE_PATH, max_length=4096)
    """Absolute path in the container, e.g. `/data/crello`."""
    read_only: bool = False
    """Mount read-only. Default false."""
    sub_path: str | None = Field(None, min_length=1, max_length=4096)
    """Mount only this path inside the volume."""


class PodExtras(Strict):
    """Pass-through settings of one component's pods."""

    env: list[EnvVar] = Field(default_factory=list)
    """More environment variables (NCCL settings, proxies, …); a name the operator also sets
    (e.g. `HF_HOME`) is replaced by this one."""
    extra_volumes: list[Volume] = Field(default_factory=list)
    """More volumes of the pods (a dataset PVC, an NFS share, a CA bundle)."""
    extra_volume_mounts: list[VolumeMount] = Field(default_factory=list)
    """Mounts of `extraVolumes` in the container."""
    security_context: dict[str, Any] | None = None
    """Pod `securityContext` keys that replace the operator's secure defaults (docs/cluster.md,
    "A restricted namespace"), e.g. `{runAsUser: 1000, fsGroup: 1000}`."""
    container_security_context: dict[str, Any] | None = None
    """Container `securityContext` keys that replace the secure defaults, e.g.
    `{readOnlyRootFilesystem: false}`."""

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PodExtras:
        names = [v.name for v in self.extra_volumes]
        reserved = sorted(set(names) & RESERVED_VOLUMES)
        if reserved:
            raise ValueError(f"extraVolumes: {reserved} are the operator's own volume names; rename yours")
        if len(set(names)) != len(names):
            raise ValueError(f"extraVolumes: duplicate volume names in {names}")
        unknown = sorted({m.name for m in self.extra_volume_mounts} - set(names))
        if unknown:
            raise ValueError(f"extraVolumeMounts: {unknown} name no volume in extraVolumes (have {names})")
        return self


RESERVED_VOLUMES = {"run-config", "dshm", "tmp", "model-cache", "models"}
"""Volume names the operator's builders use."""


class SecretKeyRef(Strict):
    """One key of a Secret in the run's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)
    """Secret name."""
    key: str = Field("HF_TOKEN", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key in the Secret. Default HF_TOKEN."""


class ModelCacheSpec(Strict):
    """A volume shared by trainer, evaluation and judge pods that holds downloaded weights, so the
    ~41 GB base model and the judge are fetched once per cluster, not once per pod and attempt."""

    model_config = ConfigDict(
        json_schema_extra=_cel([("has(self.claimName) != has(self.volume)", "set exactly one of claimName or volume")])
    )

    claim_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)
    """A PersistentVolumeClaim in the run's namespace (ReadWriteMany when pods on several nodes
    share it, e.g. the 2 trainer nodes and the judge)."""
    volume: dict[str, Any] | None = None
    """Any other volume source instead, as in a Pod volume without `name`: `{nfs: {server, path}}`,
    `{csi: …}`, `{hostPath: …}` (not allowed in a `restricted` namespace)."""
    mount_path: str = Field("/var/cache/stable-layers", pattern=ABSOLUTE_PATH, max_length=1024)
    """Where the cache is mounted in every pod; `HF_HOME` is `<mountPath>/huggingface` and the judge's
    `--download-dir` is `<mountPath>/huggingface/hub` (the same hub layout). Default
    /var/cache/stable-layers."""
    read_only: bool = False
    """Mount read-only and set `HF_HUB_OFFLINE=1`: for a cache filled beforehand (docs/cluster.md).
    Default false (pods download what is missing)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelCacheSpec:
        if (self.claim_name is None) == (self.volume is None):
            raise ValueError("set exactly one of claimName or volume")
        if self.volume is not None and len(self.volume) != 1:
            raise ValueError(f"volume needs exactly one volume source (got {sorted(self.volume)})")
        return self


def is_quantity(text: str) -> bool:
    return re.fullmatch(QUANTITY_PATTERN, text) is not None
