"""The Dockerfile, checked statically: no Docker engine exists here, so `docker build` never runs
(docs/testing.md). What is checked: the targets, version-pinned bases, non-root users, entry points
that match pyproject's console scripts and the chart, pinned Python packages, and .dockerignore."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
sys.path.insert(0, str(ROOT / "scripts"))

import lock_image_deps  # noqa: E402


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [arg for kw, arg in self.instructions if kw == keyword]
        return found[-1] if found else None


def _logical_lines(text: str) -> list[str]:
    """Instructions with line continuations joined and comment lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages, ARGs substituted in FROM."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, arg = line.partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword == "ARG" and not stages:
            name, _, default = arg.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", arg, re.IGNORECASE)
            assert m, f"unparseable FROM {arg!r}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda g: global_args.get(g.group(1), g.group(0)), m.group(1))
            stages.append(Stage(base=base, name=m.group(2)))
        elif stages:
            stages[-1].instructions.append((keyword, arg))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
TARGETS = {s.name: s for s in STAGES if s.name}
STAGE_NAMES = set(TARGETS)


def _exec_form(arg: str | None) -> list[str]:
    assert arg is not None
    assert arg.startswith("["), f"use the exec form (JSON array), not shell form: {arg}"
    return yaml.safe_load(arg)


def _resolve(value: str, stage: Stage) -> str:
    """Substitute ARG defaults (stage-local ARG NAME re-imports the global default)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda g: GLOBAL_ARGS.get(g.group(1), g.group(0)), value)


def test_one_target_per_image() -> None:
    assert {"operator", "worker"} <= STAGE_NAMES


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name or s.base)
def test_base_images_pinned_by_version(stage: Stage) -> None:
    if stage.base in STAGE_NAMES:  # FROM an earlier stage
        return
    assert "$" not in stage.base, f"unresolved ARG in FROM {stage.base}"
    if "@sha256:" in stage.base:
        return
    _, sep, tag = stage.base.rpartition(":")
    assert sep and "/" not in tag, f"{stage.base}: untagged base image"
    assert tag != "latest", f"{stage.base}: ':latest' is not a version"
    assert re.search(r"\d+\.\d+", tag), f"{stage.base}: tag {tag!r} names no version"


def test_worker_base_is_cuda_pytorch_and_operator_base_is_slim_python() -> None:
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", TARGETS["worker"].base)
    op_base = TARGETS["operator"].base
    assert re.fullmatch(r"python:3\.(1[1-9])\.\d+-slim-\w+", op_base), op_base
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == ">=3.11"


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_final_user_is_not_root(target: str) -> None:
    user = TARGETS[target].last("USER")
    assert user is not None, f"{target}: no USER, the image would run as root"
    resolved = _resolve(user, TARGETS[target]).split(":")[0]
    assert resolved not in {"0", "root"}, f"{target}: USER {user} is root"
    assert resolved.isdigit(), "a numeric uid lets Kubernetes enforce runAsNonRoot"
    # The chart's pod securityContext must agree with the image's uid.
    values = yaml.safe_load((ROOT / "charts/stable-layers-operator/values.yaml").read_text(encoding="utf-8"))
    assert values["podSecurityContext"]["runAsUser"] == int(resolved)


def test_worker_entry_point_is_a_pyproject_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    entry = _exec_form(TARGETS["worker"].last("ENTRYPOINT"))
    assert entry == ["stable-layers"]
    assert entry[0] in scripts
    module, _, attr = scripts[entry[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), f"console script target {scripts[entry[0]]}"


def test_operator_entry_point_matches_the_chart() -> None:
    """The image's entry point is the command the chart runs, and that module is runnable."""
    entry = _exec_form(TARGETS["operator"].last("ENTRYPOINT"))
    template = (ROOT / "charts/stable-layers-operator/templates/deployment.yaml").read_text(encoding="utf-8")
    (command,) = re.findall(r"^\s+command: (\[.*\])$", template, re.M)
    assert entry == yaml.safe_load(command) == ["stable-layers-operator"]
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["stable-layers-operator"] == "stable_layers_operator.main:main"
    assert callable(importlib.import_module("stable_layers_operator.main").main)


def test_images_install_the_project_with_pinned_constraints() -> None:
    operator_build = next(s for s in STAGES if s.name == "operator-build")
    runs = " ".join(arg for kw, arg in operator_build.instructions if kw == "RUN")
    assert re.search(r"pip install -c docker/constraints\.txt \.(\s|$)", runs), "operator: pip install . without extras"
    runs = " ".join(arg for kw, arg in TARGETS["worker"].instructions if kw == "RUN")
    # the trackers of metrics.reportTo ship in the image, so a cluster run can ask for them
    assert 'pip install -c docker/constraints.txt ".[worker,tensorboard,wandb]"' in runs
    copied = " ".join(arg for kw, arg in TARGETS["operator"].instructions if kw == "COPY")
    assert "--from=operator-build /opt/venv" in copied, "the operator image copies only the built venv"


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges() -> None:
    pins = lock_image_deps.read_pins()
    assert lock_image_deps.problems(pins) == []
    assert not any(name.startswith(("torch", "nvidia-")) for name in pins), "torch comes from the base image"
    for line in lock_image_deps.CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z0-9._-]+==\S+", line), line


def test_dockerignore_keeps_what_the_build_copies_and_drops_local_state() -> None:
    patterns = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copied = set()
    for stage in STAGES:
        for kw, arg in stage.instructions:
            if kw == "COPY" and not arg.startswith("--from"):
                copied.update(shlex.split(arg)[:-1])
    assert copied >= {"pyproject.toml", "README.md", "workers", "operator", "docker/constraints.txt"}
    for path in copied:
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
        assert not any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns), f"{path} is ignored"
    for local in (".git", ".venv", ".tools", "runs", "tests"):
        assert local in patterns, f".dockerignore should exclude {local}"


def test_exposed_ports_match_the_chart_and_the_trainer() -> None:
    values = yaml.safe_load((ROOT / "charts/stable-layers-operator/values.yaml").read_text(encoding="utf-8"))
    operator_ports = {int(p) for p in (TARGETS["operator"].last("EXPOSE") or "").split()}
    assert operator_ports == {values["liveness"]["port"], values["metrics"]["port"]}
    from stable_layers_operator.resource import TrainerSpec

    worker_ports = {int(p) for p in (TARGETS["worker"].last("EXPOSE") or "").split()}
    assert worker_ports == {TrainerSpec().metrics_port}
