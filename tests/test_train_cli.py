"""`stable-layers train` / `demo` through the CLI: the example run, and clear errors (exit code 2, one
message naming the field or file, no traceback) for bad specs, data and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.spec import SpecError, example_run_path, load_run_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "local-run.yaml"
runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _spec_file(tmp_path: Path, body: dict | str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def test_examples_are_the_shipped_run_specs():
    """examples/*.yaml are links to the package's own copies: one file each, nothing to keep equal."""
    for name in ("local-run", "demo-run"):
        example = ROOT / "examples" / f"{name}.yaml"
        assert example.is_symlink() and example.resolve() == example_run_path(name).resolve()
        assert load_run_spec(example) == load_run_spec(example_run_path(name))


def test_unknown_shipped_spec_names_the_choices():
    with pytest.raises(SpecError, match=r"nope: no such shipped run spec; choose one of \['demo-run', 'local-run'\]"):
        example_run_path("nope")


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    result, text = _invoke("train", str(EXAMPLE), "--out", str(out))
    assert result.exit_code == 0, text
    return out, text


def test_example_run_writes_metrics_and_committed_checkpoints(example_run):
    out, text = example_run
    assert "done: step 3" in text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("reward_mean", "reward_std", "group_std_mean", "zero_std_ratio", "loss", "kl", "approx_kl",
                    "clipfrac", "step_seconds", "samples_per_second"):  # fmt: skip
            assert isinstance(r[key], float), key
    for step in (2, 3):  # every 2 steps, and the end
        ckpt = out / "checkpoints" / f"step-{step:06d}"
        manifest = json.loads((ckpt / "COMMITTED").read_text())
        assert {"lora/pytorch_lora_weights.safetensors", "trainer.pt", "trainer.json", "run.yaml"} <= manifest[
            "files"
        ].keys()


def test_example_lora_loads_into_diffusers_pipeline(example_run):
    """The checkpoint's LoRA is plain diffusers format: `pipe.load_lora_weights` takes it, alpha kept."""
    from stable_layers.policy.tiny import tiny_pipeline

    out, _ = example_run
    pipe = tiny_pipeline(seed=0)
    pipe.load_lora_weights(
        str(out / "checkpoints" / "step-000003" / "lora"), weight_name="pytorch_lora_weights.safetensors"
    )
    (cfg,) = pipe.transformer.peft_config.values()
    assert (cfg.r, cfg.lora_alpha) == (4, 8)


def test_resume_of_finished_run_is_a_no_op(example_run):
    out, _ = example_run
    before = (out / "metrics.jsonl").read_text()
    result, text = _invoke("train", str(EXAMPLE), "--out", str(out), "--resume")
    assert result.exit_code == 0, text
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"grpo": {"groupSzie": 4}}, "grpo.groupSzie: unknown field"),
        ({"grpo": {"groupSize": 1}}, "grpo.groupSize"),
        ({"sampler": {"sdeWindowRange": [5, 12]}}, "sdeWindowRange must satisfy"),
        ("grpo: [1, 2", "not valid YAML"),
    ],
)
def test_bad_spec_is_one_clear_error(tmp_path, body, needle):
    result, text = _invoke("train", str(_spec_file(tmp_path, body)), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert needle in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()  # nothing was started


def test_missing_spec_file(tmp_path):
    result, text = _invoke("train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "run spec file not found" in text


def test_missing_data_is_reported(tmp_path):
    spec = {**yaml.safe_load(EXAMPLE.read_text()), "data": {"kind": "folder", "path": str(tmp_path / "no-images")}}
    result, text = _invoke("train", str(_spec_file(tmp_path, spec)), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "data.path" in text and "no-images" in text and "Traceback" not in text
    progress = json.loads((tmp_path / "o" / "progress.json").read_text())
    assert progress["phase"] == "Failed" and "no-images" in progress["message"]


def test_corrupted_checkpoint_is_reported(example_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(example_run[0], out)
    (out / "checkpoints" / "step-000003" / "trainer.pt").write_bytes(b"bit rot")
    result, text = _invoke("train", str(EXAMPLE), "--out", str(out), "--resume", "--max-steps", "5")
    assert result.exit_code == 2
    assert "trainer.pt" in text and "corrupted" in text and "Traceback" not in text


def test_evaluate_flag_writes_a_report_per_due_checkpoint_and_at_the_end(tmp_path):
    """`train --evaluate`: eval.everySteps=2 over 3 steps evaluates the step-2 checkpoint and the
    final step-3 one, each report where the operator would put it (eval/step-NNNNNN/)."""
    body = yaml.safe_load(EXAMPLE.read_text())
    body["eval"] = {"everySteps": 2, "data": "synthetic:heldout", "limit": 1, "heldoutSize": 64, "bootstrap": 0,
                    "gallery": 1, "workers": 1}  # fmt: skip
    out = tmp_path / "run"
    result, text = _invoke("train", str(_spec_file(tmp_path, body)), "--out", str(out), "--evaluate")
    assert result.exit_code == 0, text
    reports = sorted(p.parent.name for p in (out / "eval").glob("step-*/report.json"))
    assert reports == ["step-000002", "step-000003"]
    report = json.loads((out / "eval" / "step-000003" / "report.json").read_text())
    assert report["summary"]["models"].keys() >= {"base", "finetuned"}


def test_evaluate_flag_without_eval_data_is_a_clear_error(tmp_path):
    result, text = _invoke("train", str(EXAMPLE), "--out", str(tmp_path / "run"), "--evaluate")
    assert result.exit_code == 2
    assert "eval.data" in text and "Traceback" not in text
