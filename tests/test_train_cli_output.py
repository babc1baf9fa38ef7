"""What `stable-layers train` prints where nobody watches a terminal: progress lines in logs, and
one clear line (no traceback) for an S3 output without credentials. Also: the package metadata
builds without setuptools' licence deprecation warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.commands.train import ProgressLines

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "local-run.yaml"


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output  # stdout and stderr, interleaved as written


def test_training_without_a_terminal_prints_progress_lines(tmp_path: Path) -> None:
    code, text = _invoke("train", str(EXAMPLE), "--out", str(tmp_path / "run"))  # CliRunner: not a tty
    assert code == 0, text
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" · reward " in line and " s/step · eta " in line for line in lines)
    assert "checkpoint step 2 committed" in text


def test_progress_lines_every_few_steps(capsys: pytest.CaptureFixture[str]) -> None:
    lines = ProgressLines(total=600)
    assert lines.every == 10
    for step in range(1, 31):
        lines.on_step({"step": step, "reward_mean": 0.5, "reward_std": 0.1, "loss": 1e-3})
    printed = [line.split()[1] for line in capsys.readouterr().err.splitlines()]
    assert printed == ["10/600", "20/600", "30/600"]


def test_s3_output_without_credentials_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, text = _invoke("train", str(EXAMPLE), "--out", "s3://bucket/run")
    assert code == 2
    assert "Traceback" not in text, text
    assert "no S3 credentials" in text
    assert len(text.strip().splitlines()) <= 2, text


def test_failed_progress_record_to_an_unreachable_store_is_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop's own safety net, for a store that dies during a run: no traceback either."""
    from stable_layers import storage
    from stable_layers.spec import load_run_spec
    from stable_layers.trainer.loop import train

    def unreachable(*_: object, **__: object) -> None:
        raise storage.StorageError("cannot write progress.json: store unreachable")

    monkeypatch.setattr(storage, "write_progress", unreachable)
    with pytest.raises(storage.StorageError):
        train(load_run_spec(EXAMPLE), tmp_path / "run", max_steps=1)
    records = [r for r in caplog.records if "Failed progress record" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None
    assert "store unreachable" in records[0].getMessage()


def test_pyproject_licence_is_an_spdx_string_without_deprecation_warning() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    assert dist.metadata.license_expression == "Apache-2.0"
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]


def test_the_judge_clients_request_lines_stay_out_of_the_log(capsys):
    """Every judge request is an INFO line of the HTTP client; the CLI's log keeps only warnings of it."""
    import logging

    from stable_layers.commands.train import _setup_logging

    _setup_logging()
    logging.getLogger("httpx").info('HTTP Request: POST http://judge/v1/chat/completions "HTTP/1.1 200 OK"')
    logging.getLogger("stable_layers.trainer.loop").info("step 1 done")
    err = capsys.readouterr().err
    assert "HTTP Request" not in err and "step 1 done" in err
