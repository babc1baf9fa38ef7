"""One file, two ways: `stable-layers train` takes the `StableLayersRun` document a user applies
to a cluster and trains its `spec.run` (default `--out`: `spec.storage.uri`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.spec import SpecError, load_run_file, load_run_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "manifests" / "examples" / "run-tiny.yaml"
runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_run_document_yields_its_spec_run_and_storage_uri() -> None:
    document = yaml.safe_load(TINY.read_text())
    spec, out = load_run_file(TINY)
    assert spec.name == document["spec"]["run"]["name"] == "tiny-smoke"
    assert spec.model.preset == "tiny" and spec.grpo.max_steps == 4
    assert out == document["spec"]["storage"]["uri"] == "s3://stable-layers-runs/tiny-smoke"
    assert load_run_spec(TINY) == spec
    # A plain run spec has no default output.
    assert load_run_file(ROOT / "examples" / "local-run.yaml")[1] is None


def test_run_document_errors_name_the_field_under_spec_run(tmp_path: Path) -> None:
    document = yaml.safe_load(TINY.read_text())
    document["spec"]["run"]["grpo"]["groupSize"] = 1
    with pytest.raises(SpecError, match=r"run\.yaml: spec\.run\.grpo\.groupSize: .*greater than or equal to 2"):
        load_run_file(_write(tmp_path, document))
    document["spec"]["run"]["grpo"]["groupSize"] = 4
    document["spec"]["run"]["lora"]["rnk"] = 4
    with pytest.raises(SpecError, match=r"spec\.run\.lora\.rnk: unknown field"):
        load_run_file(_write(tmp_path, document))


def test_other_kinds_are_refused_with_exit_code_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {"apiVersion": "batch/v1", "kind": "Job", "spec": {}})
    code, text = _invoke("train", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and "batch/v1/Job is not a run spec" in text and "Traceback" not in text


def test_bad_document_fails_fast_with_the_field(tmp_path: Path) -> None:
    document = yaml.safe_load(TINY.read_text())
    document["spec"]["run"]["sampler"]["resolution"] = "big"
    code, text = _invoke("train", str(_write(tmp_path, document)), "--out", str(tmp_path / "out"))
    assert code == 2 and "spec.run.sampler.resolution" in text and "Traceback" not in text


def test_plain_spec_without_out_is_refused(tmp_path: Path) -> None:
    code, text = _invoke("train", str(ROOT / "examples" / "local-run.yaml"))
    assert code == 2 and "no --out given" in text


@pytest.mark.slow
def test_the_cluster_example_trains_on_a_laptop(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, text = _invoke("train", str(TINY), "--out", str(out), "--max-steps", "2")
    assert code == 0, text
    assert "done: step 2" in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (out / "checkpoints" / "step-000002" / "COMMITTED").is_file()
