"""`run_evaluation` end to end: report.json contents, the HTML page (rendered in headless Chromium),
Crello input, store output, and the real CLI on the tiny-random model with a LoRA checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import crello_fixture as cf
import numpy as np
import pytest
from PIL import Image
from s3_server import BUCKET, moto_endpoint, s3_env  # noqa: F401

from stable_layers.data import synthetic
from stable_layers.eval.runner import EvalDataError, run_evaluation
from stable_layers.spec import RunSpec

pytestmark = pytest.mark.timeout(300)
MAGENTA = (255, 0, 255)


def spec(**eval_fields) -> RunSpec:
    ev = {"workers": 1, "heldoutSize": 48, "bootstrap": 200, "gallery": 2, **eval_fields}
    return RunSpec.model_validate({"name": "unit", "eval": ev})


def gt_of(image: np.ndarray, n_layers: int, size: int = 48) -> list[np.ndarray]:
    for s in synthetic.split_seeds("heldout", 16):
        d = synthetic.make_design(s, size)
        if np.array_equal(d.image, image):
            return list(d.layers)
    raise AssertionError("not a held-out design")


def perfect(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
    return gt_of(image, n_layers)


def blank_top(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
    """The input as background, then a magenta slab, then blank layers: bad in known ways."""
    h, w = image.shape[:2]
    slab = np.zeros((h, w, 4), np.uint8)
    slab[: h // 2] = (*MAGENTA, 255)
    return [image.copy(), slab] + [np.zeros((h, w, 4), np.uint8) for _ in range(n_layers - 2)]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    rep = run_evaluation(
        spec(), "synthetic:heldout", out, limit=6, decomposers={"base": perfect, "finetuned": blank_top}
    )
    return out, rep


def test_report_json_has_every_metric_per_model_per_k_and_per_l(report_dir):
    out, rep = report_dir
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == rep
    assert (out / "report.json").stat().st_mode & 0o777 == 0o644
    assert not list(out.glob(".tmp-*"))
    base, tuned = rep["summary"]["models"]["base"], rep["summary"]["models"]["finetuned"]
    assert [lvl["k"] for lvl in base["layerd"]] == [0, 1, 2, 3, 4, 5]
    assert base["layerd"][0]["rgb_l1"] == 0.0 and base["layerd"][5]["alpha_iou"] == 1.0
    assert tuned["layerd"][0]["alpha_iou"] < 1.0
    assert base["metrics"]["blank_layer_rate"] == 0.0
    n_layers = [d["gtLayers"] for d in rep["designs"]]
    blank_expected = sum(max(0, n - 2) for n in n_layers) / sum(n - 1 for n in n_layers)
    assert tuned["metrics"]["blank_layer_rate"] == pytest.approx(blank_expected)
    assert tuned["metrics"]["degenerate_bg"] == 1.0  # layer 0 is the input itself
    assert set(base["metrics"]["per_layer_by_L"]) == {str(n) for n in n_layers}
    comp = rep["summary"]["comparison"]
    for key in (
        "blank_layer_rate",
        "composite_duplicate_rate",
        "layerd_rgb_l1_k0",
        "layerd_alpha_iou_k0",
        "layerd_rgb_l1_k5",
        "layerd_alpha_iou_k5",
    ):
        assert comp[key]["designs"] == 6 and comp[key]["ci"] is not None, key
    assert comp["blank_layer_rate"]["diff"] == pytest.approx(blank_expected)
    assert comp["layerd_alpha_iou_k0"]["ci"][1] < 0  # clearly worse, interval excludes zero
    assert any(k.startswith("per_layer_l1_L") for k in comp)
    assert rep["settings"]["seed"] == 42 and rep["dataset"]["kind"] == "synthetic"
    assert len(rep["designs"]) == 6 and "layerd" in rep["designs"][0]["finetuned"]


def test_same_seeds_for_both_models(tmp_path: Path):
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def rec(name):
        def fn(image, n_layers, seed):
            seen[name].append(seed)
            return perfect(image, n_layers, seed)

        return fn

    run_evaluation(
        spec(seed=7, bootstrap=0), "synthetic:heldout", tmp_path, limit=3, decomposers={"a": rec("a"), "b": rec("b")}
    )
    assert seen["a"] == seen["b"] == [7, 8, 9]


def _screenshot(chromium: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1280,4000",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _count(shot: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(shot - np.array(rgb)).max(axis=-1) <= tol).sum())


def test_html_report_renders_with_images_in_headless_chromium(report_dir, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; scripts/install-test-tools.sh)")
    out, _ = report_dir
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    imgs = re.findall(r"<img[^>]* src=\"data:image/png;base64,", page)
    # 3 plots + per gallery design: input + GT + 2 models' layers
    assert len(imgs) >= 3 + 2 * (1 + 3 * 2)
    shot = _screenshot(chromium, out / "report.html", tmp_path / "with.png", tmp_path / "p1")
    stripped = tmp_path / "stripped.html"
    stripped.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page))
    bare = _screenshot(chromium, stripped, tmp_path / "without.png", tmp_path / "p2")
    # The fine-tuned stack's magenta slab (top half of a layer, shown 140 px wide → 140×70 px)
    # shows in the gallery for both gallery designs; plots draw the fine-tuned model in orange.
    # Neither colour exists on the page without its images.
    assert _count(shot, MAGENTA) > 2 * 0.8 * 140 * 70
    assert _count(bare, MAGENTA) == 0
    orange = (0xD9, 0x54, 0x1E)
    assert _count(shot, orange, tol=20) > 2000 and _count(bare, orange, tol=20) == 0
    assert shot.std() > 30  # not a blank page


def test_crello_input_and_skips_in_the_report(tmp_path: Path):
    cf.write_parquet(tmp_path / "crello")

    def copy_gt(image, n_layers, seed):
        # decompose into "background = input" + blanks; sizes must match the GT
        return [np.concatenate([image[..., :3], np.full((*image.shape[:2], 1), 255, np.uint8)], -1)] + [
            np.zeros((*image.shape[:2], 4), np.uint8) for _ in range(n_layers - 1)
        ]

    s = RunSpec.model_validate({"eval": {"workers": 1, "bootstrap": 0, "crello": {"shortSide": 64, "maxLayers": 4}}})
    rep = run_evaluation(s, f"crello:{tmp_path / 'crello'}", tmp_path / "out", decomposers={"base": copy_gt})
    ds = rep["dataset"]
    assert ds["designs"] == 2 and ds["textPath"] == "prerendered"
    assert ds["skipped"] == {"fewer than 2 opaque elements": 2, "more than 4 layers (eval.crello.maxLayers)": 1}
    assert "comparison" not in rep["summary"]
    assert any("pre-rendered" in n for n in rep["notes"])
    with pytest.raises(EvalDataError, match="synthetic:heldout"):
        run_evaluation(s, "laion:/x", tmp_path / "o2", decomposers={"base": copy_gt})


def test_report_to_a_store_uri_scored_in_worker_processes(s3_env: str, tmp_path: Path):  # noqa: F811
    """Also the process-pool path of scoring (workers=2, spawn): results must equal inline scoring."""
    from stable_layers.storage import open_store

    uri = f"s3://{BUCKET}/run/eval/step-000010"
    run_evaluation(
        spec(bootstrap=0, gallery=1, workers=2), "synthetic:heldout", uri, limit=2, decomposers={"base": perfect}
    )
    store = open_store(uri)
    assert sorted(store.list("")) == ["report.html", "report.json"]
    pooled = json.loads(store.get_bytes("report.json"))
    assert pooled["dataset"]["designs"] == 2
    inline = run_evaluation(
        spec(bootstrap=0, gallery=1), "synthetic:heldout", tmp_path, limit=2, decomposers={"base": perfect}
    )
    assert pooled["designs"] == inline["designs"]


@pytest.mark.slow
def test_cli_with_tiny_model_and_a_lora_checkpoint(tmp_path: Path):
    """The operator's Job command on the real code path: tiny-random pipeline, LoRA from a
    committed checkpoint in a store, base and adapter in one run."""
    import torch
    import yaml
    from typer.testing import CliRunner

    from stable_layers import storage
    from stable_layers.cli import app
    from stable_layers.policy import model

    run = {
        "name": "tiny-eval",
        "model": {"preset": "tiny-random"},
        "lora": {"rank": 4, "alpha": 8},
        "sampler": {"resolution": 64, "evalSteps": 2},
        "eval": {"workers": 1, "heldoutSize": 48, "bootstrap": 50, "gallery": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    policy = model.load_policy(RunSpec.model_validate(run), with_lora=True)
    with torch.no_grad():
        for p in policy.lora_params:
            p.normal_(0.0, 0.3)
    model.save_lora(policy, tmp_path / "ckpt" / "lora")
    del policy
    store = storage.open_store(tmp_path / "runs")
    uri = storage.commit_checkpoint(store, 5, tmp_path / "ckpt")
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path / "run.yaml"),
            "--data",
            "synthetic:heldout",
            "--out",
            str(tmp_path / "rep"),
            "--checkpoint",
            uri,
            "--limit",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(rep["summary"]["models"]) == {"base", "finetuned"}
    b, f = rep["designs"][0]["base"]["metrics"], rep["designs"][0]["finetuned"]["metrics"]
    assert b["layers"] == f["layers"] == rep["designs"][0]["gtLayers"]
    assert b["recon_l1"] != f["recon_l1"]  # the adapter changed the output
    bad = CliRunner().invoke(
        app, ["eval", str(tmp_path / "run.yaml"), "--data", "nope:x", "--out", str(tmp_path / "r2")]
    )
    assert bad.exit_code == 2 and "synthetic:heldout" in bad.output
