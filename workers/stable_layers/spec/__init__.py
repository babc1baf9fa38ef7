"""`RunSpec`: the one schema of a Stable-Layers training run.

Read by `stable-layers train`, embedded verbatim as the `spec.run` of the `StableLayersRun` custom
resource (the CRD's OpenAPI schema is generated from these models), and passed to trainer pods as
YAML. Field names are camelCase in YAML/JSON (Kubernetes convention); snake_case is accepted too.

Every field's docstring states its default and where the default comes from:
  [FG]  flow_grpo reference code (Qwen-Image configs unless noted) — shared/docs/method.md §1.6
  [SL]  the Stable-Layers inference release
  [OURS] our choice where neither says anything; the reason is given.

This module must stay importable without torch or diffusers: the operator image reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from stable_layers.spec.base import CRITERIA, QWEN_LORA_TARGETS, SpecError, Strict
from stable_layers.spec.evaluation import CrelloEvalSpec, EvalSpec, EvalThresholds
from stable_layers.spec.observability import MetricsSpec, RolloutsSpec
from stable_layers.spec.policy import PROTOCOLS, RELEASE_PROMPT, LoraSpec, ModelSpec, SamplerSpec, protocol_of
from stable_layers.spec.reward import (
    OpenAIJudgeSpec,
    PenaltySpec,
    PixelRewardSpec,
    RewardSpec,
    TransformersJudgeSpec,
)
from stable_layers.spec.training import CheckpointSpec, DataSpec, DistributedSpec, GRPOSpec

__all__ = [
    "CRITERIA",
    "EXAMPLE_RUNS",
    "PROTOCOLS",
    "QWEN_LORA_TARGETS",
    "RELEASE_PROMPT",
    "CheckpointSpec",
    "CrelloEvalSpec",
    "DataSpec",
    "DistributedSpec",
    "EvalSpec",
    "EvalThresholds",
    "GRPOSpec",
    "LoraSpec",
    "MetricsSpec",
    "ModelSpec",
    "OpenAIJudgeSpec",
    "PenaltySpec",
    "PixelRewardSpec",
    "RewardSpec",
    "RolloutsSpec",
    "RunSpec",
    "SamplerSpec",
    "SpecError",
    "Strict",
    "TransformersJudgeSpec",
    "example_run_path",
    "format_validation_error",
    "load_run_file",
    "load_run_spec",
    "parse_run_spec",
    "protocol_of",
    "run_document",
]


class RunSpec(Strict):
    """One Stable-Layers Flow-GRPO fine-tuning run."""

    name: str = Field("stable-layers", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    """Run name (DNS label; used in metric labels and object names). Default `stable-layers`."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    grpo: GRPOSpec = Field(default_factory=GRPOSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    rollouts: RolloutsSpec = Field(default_factory=RolloutsSpec)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with camelCase keys (what YAML files and the CRD hold)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names allowed at the parent of `loc` (for 'unknown field' messages)."""
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        field = next((f for n, f in cls.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        cls = field.annotation
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(f.alias or n for n, f in cls.model_fields.items())
    return []


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] = RunSpec) -> str:
    """One readable message: `source: field.path: problem (got X)` per error, with the fix."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _field_path(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{source}: {path}: unknown field{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {path}: {msg}{shown}")
    return "\n".join(lines)


def parse_run_spec(data: Any, source: str = "<spec>") -> RunSpec:
    """Validate a dict (already parsed YAML/JSON) into a RunSpec, raising `SpecError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the run spec must be a mapping of sections (model, lora, ...), got {type(data).__name__}"
        )
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


RUN_DOCUMENT_GROUP = "stablelayers.io"
RUN_DOCUMENT_KIND = "StableLayersRun"


def run_document(data: Any, source: str = "<spec>") -> tuple[RunSpec, str | None]:
    """(run spec, default output URI) of parsed YAML: a plain run spec, or a `StableLayersRun`
    document (what `kubectl apply -f` takes), whose `spec.run` is the run and `spec.storage.uri`
    the default output. The other sections describe cluster resources and are the operator's to
    validate; the worker never imports the operator (it depends on this package)."""
    if not (isinstance(data, dict) and ("apiVersion" in data or "kind" in data)):
        return parse_run_spec(data, source), None
    api, kind = data.get("apiVersion"), data.get("kind")
    if kind != RUN_DOCUMENT_KIND or not str(api).startswith(f"{RUN_DOCUMENT_GROUP}/"):
        raise SpecError(
            f"{source}: apiVersion/kind {api}/{kind} is not a run spec; expected a run spec or a "
            f"{RUN_DOCUMENT_GROUP}/v1alpha1 {RUN_DOCUMENT_KIND}"
        )
    spec = data.get("spec") or {}
    if not isinstance(spec, dict):
        raise SpecError(f"{source}: spec: must be a mapping with a `run` section")
    run = spec.get("run") or {}
    if not isinstance(run, dict):
        raise SpecError(f"{source}: spec.run: must be a mapping of sections (model, lora, ...)")
    try:
        parsed = RunSpec.model_validate(run)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source).replace(f"{source}: ", f"{source}: spec.run.")) from None
    uri = (spec.get("storage") or {}).get("uri") if isinstance(spec.get("storage"), dict) else None
    return parsed, str(uri) if uri else None


def load_run_file(path: str | Path) -> tuple[RunSpec, str | None]:
    """`run_document` of a YAML/JSON file, raising `SpecError` naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: run spec file not found; pass the path of a YAML file such as examples/local-run.yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{p}: cannot read the run spec ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    return run_document(data, str(p))


def load_run_spec(path: str | Path) -> RunSpec:
    """Read a YAML or JSON run spec (or a `StableLayersRun` document) from a file, raising
    `SpecError` naming the file and field."""
    return load_run_file(path)[0]


EXAMPLE_RUNS = Path(__file__).resolve().parents[1] / "assets" / "runs"
"""Run specs shipped as package data (`local-run`, `demo-run`); `examples/*.yaml` in the repository
are links to these files, so there is one copy of each."""


def example_run_path(name: str) -> Path:
    """The shipped run spec `name` (e.g. "demo-run" → `.../assets/runs/demo-run.yaml`)."""
    path = EXAMPLE_RUNS / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in EXAMPLE_RUNS.glob("*.yaml"))
        raise SpecError(f"{name}: no such shipped run spec; choose one of {shipped}")
    return path
