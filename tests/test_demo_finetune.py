"""The one-machine demo (issue 8): its shipped spec, the headline changes the report states with
their verdicts, intervals only over designs where a statistic is defined, and `stable-layers demo`
end to end (the random tiny model when the trained one is missing, said so)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.data import synthetic
from stable_layers.eval.report import render_html
from stable_layers.eval.runner import run_evaluation
from stable_layers.eval.summary import headline_changes, verdict
from stable_layers.spec import RunSpec, example_run_path, load_run_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def test_demo_spec_is_the_issue_8_setting():
    """Pixel reward on synthetic designs at the model's working size, the trained tiny model,
    held-out evaluation at each design's own layer count with enough designs for intervals."""
    spec = load_run_spec(example_run_path("demo-run"))
    assert spec.model.preset == "tiny" and spec.reward.kind == "pixel"
    assert spec.data.kind == "synthetic" and spec.data.size == spec.sampler.resolution == 64
    assert spec.eval.layers == "gt" and spec.eval.heldout_designs >= 48 and spec.eval.bootstrap >= 1000
    assert spec.grpo.max_steps % spec.grpo.optimizer_steps_per_iteration == 0  # ends on an iteration
    assert spec.checkpoint.every_steps <= spec.grpo.max_steps
    # the quick example stays quick (the CLI tests run it)
    local = load_run_spec(example_run_path("local-run"))
    assert local.grpo.max_steps <= 3 and local.model.preset == "tiny-random"


@pytest.mark.parametrize(
    ("key", "ci", "expected"),
    [
        ("blank_layer_rate", [-0.09, -0.03], "improved"),
        ("blank_layer_rate", [0.01, 0.2], "worse"),
        ("layerd_rgb_l1_k0", [-0.02, -0.01], "improved"),
        ("per_layer_l1_L4", [0.001, 0.02], "worse"),
        ("layerd_alpha_iou_k5", [0.01, 0.05], "improved"),
        ("layerd_alpha_iou_k0", [-0.05, -0.01], "worse"),
        ("recon_psnr", [-0.1, -0.01], "worse"),
        ("composite_duplicate_rate", [0.0, 0.0], "no significant change"),
        ("artifact_layer_rate", [-0.05, 0.05], "no significant change"),
        ("per_layer_l1_L3", None, "no interval"),
    ],
)
def test_verdict_follows_the_statistics_direction(key, ci, expected):
    assert verdict(key, ci) == expected


def _blank_top(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
    """Input as background, a grey slab, then blank layers: worse than the truth in known ways."""
    h, w = image.shape[:2]
    slab = np.zeros((h, w, 4), np.uint8)
    slab[: h // 2] = (128, 128, 128, 255)
    return [image.copy(), slab] + [np.zeros((h, w, 4), np.uint8) for _ in range(n_layers - 2)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    size, n = 48, 10
    truth = {synthetic.make_design(s, size).image.tobytes(): synthetic.make_design(s, size).layers
             for s in synthetic.split_seeds("heldout", n)}  # fmt: skip

    def perfect(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
        return list(truth[image.tobytes()])

    spec = RunSpec.model_validate(
        {"name": "demo-unit", "eval": {"workers": 1, "heldoutSize": size, "bootstrap": 300, "gallery": 0}}
    )
    out = tmp_path_factory.mktemp("demo-report")
    return run_evaluation(
        spec, "synthetic:heldout", out, limit=n, decomposers={"base": perfect, "finetuned": _blank_top}
    )


def test_intervals_cover_only_designs_where_the_statistic_is_defined(report):
    """Per-layer L1 of L is defined on the designs with L layers only: `designs` counts those, and
    a single design gives no interval (not a zero-width one)."""
    comp = report["summary"]["comparison"]
    by_l = Counter(d["gtLayers"] for d in report["designs"])
    assert len(by_l) > 1
    for n_layers, count in by_l.items():
        c = comp[f"per_layer_l1_L{n_layers}"]
        assert c["designs"] == count
        assert (c["ci"] is None) == (count < 2)
    assert comp["blank_layer_rate"]["designs"] == len(report["designs"])


def test_report_states_every_headline_change_with_interval_and_verdict(report):
    rows = report["summary"]["changes"]
    keys = [r["key"] for r in rows]
    by_l = sorted({d["gtLayers"] for d in report["designs"]})
    assert keys[:6] == [
        "blank_layer_rate",
        "composite_duplicate_rate",
        "layerd_rgb_l1_k0",
        "layerd_alpha_iou_k0",
        "layerd_rgb_l1_k5",
        "layerd_alpha_iou_k5",
    ]
    assert keys[6 : 6 + len(by_l)] == [f"per_layer_l1_L{n}" for n in by_l]
    comp = report["summary"]["comparison"]
    for r in rows:
        assert (r["base"], r["finetuned"], r["diff"], r["ci"]) == tuple(
            comp[r["key"]][f] for f in ("base", "finetuned", "diff", "ci")
        )
    verdicts = {r["key"]: r["verdict"] for r in rows}
    # the truth → blank layers and a slab: blank rate up, IoU down; nothing duplicates the composite
    assert verdicts["blank_layer_rate"] == "worse" and verdicts["layerd_alpha_iou_k0"] == "worse"
    assert verdicts["composite_duplicate_rate"] == "no significant change"
    page = render_html(report, [])
    worse_line = next(line for line in page.split("<br>") if "Worse (95% interval excludes zero)" in line)
    assert "blank-layer rate" in worse_line and "LayerD alpha IoU (k=0)" in worse_line
    assert "No significant change" in page and "composite-duplicate rate" in page


def test_changes_skip_statistics_the_comparison_lacks():
    comp = {"blank_layer_rate": {"base": 0.1, "finetuned": 0.0, "diff": -0.1, "ci": [-0.2, -0.05], "designs": 9}}
    (row,) = headline_changes(comp, max_edits=5)
    assert row["label"] == "blank-layer rate" and row["verdict"] == "improved" and row["lowerIsBetter"]


def test_demo_runs_and_prints_the_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded demo through the CLI, 1 step and 3 designs; with no trained tiny model installed
    it says so and runs on tiny-random (plumbing, not a result)."""
    import stable_layers.policy.model

    monkeypatch.setattr(stable_layers.policy.model, "TINY_ASSETS", tmp_path / "no-tiny")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "run"), "--steps", "1", "--eval-limit", "3"])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 0, text
    assert "not installed" in text and "tiny-random" in text
    rep = json.loads((tmp_path / "run" / "eval" / "step-000001" / "report.json").read_text())
    assert rep["dataset"]["designs"] == 3 and rep["checkpoint"]
    for row in rep["summary"]["changes"]:
        assert row["label"] in text
    assert "did not improve:" in text and "report.html" in text
