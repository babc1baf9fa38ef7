"""User docs stay true: the configuration reference matches the pydantic models, links resolve,
and the commands the README and cluster guide tell users to run point at things that exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import generate_config_reference as gcr  # noqa: E402

from stable_layers.spec import RunSpec  # noqa: E402

README = ROOT / "README.md"
USER_DOCS = [
    README,
    *(
        ROOT / "docs" / name
        for name in ("architecture.md", "cluster.md", "configuration.md", "troubleshooting.md", "testing.md")
    ),
]


def test_configuration_reference_has_no_drift() -> None:
    current = gcr.OUTPUT.read_text(encoding="utf-8")
    assert current == gcr.render(), "docs/configuration.md is out of date: run scripts/generate_config_reference.py"


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        sub = gcr._nested_model(field.annotation)
        out += _leaf_paths(sub, path) if sub is not None else [path]
    return out


def test_configuration_reference_lists_every_run_field_with_its_default() -> None:
    text = gcr.render()
    for path in _leaf_paths(RunSpec):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{path}` |")), None)
        assert row is not None, f"{path} missing from the configuration reference"
    row = next(line for line in text.splitlines() if line.startswith("| `grpo.groupSize` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["integer", "`8`", "≥ 2, ≤ 64"]
    assert "Candidates G sampled per image" in cells[4]


def test_configuration_reference_documents_the_custom_resource() -> None:
    pytest.importorskip("stable_layers_operator.resource")
    text = gcr.render()
    assert "## StableLayersRun spec" in text
    for path in ("spec.storage.uri", "spec.trainer.gpusPerNode", "spec.judge.tensorParallel", "spec.suspend"):
        assert f"| `{path}` |" in text, path
    # spec.run is RunSpec: linked, not duplicated.
    assert "| `spec.run.grpo.groupSize` |" not in text
    assert "**required**" in next(line for line in text.splitlines() if line.startswith("| `spec.storage` |"))


def test_type_names_are_readable() -> None:
    from typing import Literal

    assert gcr.type_name(Literal["a", "b"] | None) == '"a" \\| "b" \\| null'
    assert gcr.type_name(tuple[int, int]) == "[integer, integer]"
    assert gcr.type_name(dict[str, float]) == "map of string → number"
    assert gcr.type_name(list[str]) == "list of string"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    assert doc.is_file(), f"{doc.relative_to(ROOT)} missing"
    text = re.sub(r"`[^`\n]*`", "", doc.read_text(encoding="utf-8"))  # code spans hold no links
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_readme_gives_the_two_fresh_machine_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    assert (ROOT / "scripts" / "demo.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8"), "README says CI runs test.sh"


@pytest.mark.parametrize("doc", [README, ROOT / "docs" / "cluster.md"], ids=lambda p: p.name)
def test_commands_point_at_existing_paths(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for path in re.findall(r"kubectl (?:-n \S+ )?apply -f ([\w./-]+)", text):
        assert (ROOT / path).exists(), f"{doc.name}: `kubectl apply -f {path}` but {path} does not exist"
    for path in re.findall(r"helm (?:upgrade --)?install \S+ ([\w./-]+)", text):
        assert (ROOT / path / "Chart.yaml").is_file(), f"{doc.name}: no chart at {path}"
    for script in re.findall(r"bash (scripts/\S+\.sh)", text):
        assert (ROOT / script).is_file(), f"{doc.name}: {script} does not exist"


def test_readme_cli_commands_exist() -> None:
    from stable_layers.cli import app

    registered = {c.name for c in app.registered_commands}
    text = README.read_text(encoding="utf-8")
    used = re.findall(r"\.venv/bin/stable-layers (\w[\w-]*)", text)
    assert {"train", "eval"} <= set(used)
    for command in set(used):
        assert command in registered, f"README uses `stable-layers {command}`, which the CLI does not have"
    for spec in re.findall(r"\.venv/bin/stable-layers \w+ (\S+\.yaml)", text):
        assert (ROOT / spec).is_file(), f"README runs {spec}, which does not exist"
