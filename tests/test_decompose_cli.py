"""`stable-layers decompose` on the shipped tiny model: files, preview, protocol settings in the
metadata, an adapter from a short training run changes the layers, a corrupt image is skipped by
name, nothing half-written is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stable_layers.cli import app
from stable_layers.commands.decompose import settings_for
from stable_layers.layers import composite_rgba, load_layers
from stable_layers.policy import tiny_installed
from stable_layers.spec import PROTOCOLS, RELEASE_PROMPT, parse_run_spec

pytestmark = pytest.mark.skipif(not tiny_installed(), reason="the shipped tiny model is not installed")
FAST = ["--model", "tiny", "--steps", "3", "--resolution", "64"]


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    a = np.zeros((48, 64, 3), np.uint8)
    a[..., 2] = 160
    a[8:30, 10:44] = (230, 40, 40)
    Image.fromarray(a).save(folder / "poster.png")
    b = np.full((64, 64, 3), 240, np.uint8)
    b[20:50, 20:50] = (20, 150, 60)
    Image.fromarray(b).save(folder / "card.jpg")
    return folder


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["decompose", *args])
    return result.exit_code, result.output


def test_release_protocol_settings_are_the_published_ones() -> None:
    s = settings_for("release", {})
    assert (s["sampler"], s["steps"], s["cfgScale"], s["resolution"], s["layers"]) == ("heun", 50, 1.0, 640, 4)
    assert (s["prompt"], s["seed"]) == (RELEASE_PROMPT, 42)
    assert settings_for("release", {"steps": 8, "layers": None})["steps"] == 8
    q = settings_for("qil", {})
    assert (q["sampler"], q["cfgScale"], q["cfgNormalize"]) == ("euler", 4.0, True)


def test_decompose_writes_layers_composite_preview_and_metadata(tmp_path: Path) -> None:
    src = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    code, output = _run(str(src), "--out", str(out), "--protocol", "release", *FAST)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["card", "poster"]
    poster = out / "poster"
    assert sorted(p.name for p in poster.iterdir()) == [
        "composite.png", "layer-00.png", "layer-01.png", "layer-02.png", "layer-03.png", "metadata.json", "preview.png"
    ]  # fmt: skip
    layers = load_layers(poster)
    assert [lay.shape for lay in layers] == [(48, 64, 4)] * 4  # the input's size, RGBA
    with Image.open(poster / "composite.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGBA")), composite_rgba(layers))
    with Image.open(poster / "preview.png") as im:
        assert im.height == 48 and im.width == 6 * 64 + 5 * 6  # input, 4 layers, composite
    meta = json.loads((poster / "metadata.json").read_text())
    release = PROTOCOLS["release"]
    for key in ("sampler", "cfgScale", "cfgNormalize", "layers", "prompt", "seed"):
        assert meta["settings"][key] == release[key], key
    assert meta["protocol"] == {
        "name": "custom",
        "differences": ["steps 3 (protocol: 50)", "resolution 64 (protocol: 640)"],
    }
    seeds = {json.loads((out / n / "metadata.json").read_text())["seed"] for n in ("card", "poster")}
    assert seeds == {42, 43}  # seed 42 + index, as the release
    assert "protocol custom (release with steps 3" in output
    assert not [p for p in out.rglob(".*")]  # no temporary folder left


def test_adapter_from_a_short_training_run_changes_the_layers(tmp_path: Path) -> None:
    from stable_layers.trainer.loop import train

    spec = parse_run_spec(
        {
            "name": "decompose-adapter",
            "model": {"preset": "tiny", "device": "cpu", "gradientCheckpointing": False},
            "lora": {"rank": 4, "alpha": 8},
            "data": {"kind": "synthetic", "numImages": 2, "seed": 5, "size": 64},
            "sampler": {"trainSteps": 3, "sdeWindowSize": 1, "sdeWindowRange": [0, 2], "resolution": 64, "layers": 2},
            "grpo": {"groupSize": 3, "imagesPerIteration": 1, "lr": 0.05, "optimizerStepsPerIteration": 1},
            "distributed": {"engine": "torch"},
            "checkpoint": {"everySteps": 3, "keep": 1},
        }
    )
    run = tmp_path / "run"
    train(spec, run, max_steps=3)
    ckpt = run / "checkpoints" / "step-000003"
    src = _inputs(tmp_path / "in")
    base_out, tuned_out, peft_out = tmp_path / "base", tmp_path / "tuned", tmp_path / "peft"
    assert _run(str(src / "poster.png"), "--out", str(base_out), *FAST)[0] == 0
    code, output = _run(str(src / "poster.png"), "--out", str(tuned_out), "--adapter", str(ckpt), *FAST)
    assert code == 0, output
    code, output = _run(str(src / "poster.png"), "--out", str(peft_out), "--adapter", str(ckpt / "lora"), *FAST)
    assert code == 0, output
    base, tuned, peft = (load_layers(d / "poster") for d in (base_out, tuned_out, peft_out))
    assert any(not np.array_equal(b, t) for b, t in zip(base, tuned, strict=True)), "the adapter changed nothing"
    assert all(np.array_equal(t, p) for t, p in zip(tuned, peft, strict=True))
    assert json.loads((tuned_out / "poster" / "metadata.json").read_text())["adapter"] == str(ckpt)


def test_corrupt_image_is_skipped_by_name(tmp_path: Path) -> None:
    src = _inputs(tmp_path / "in")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    code, output = _run(str(src), "--out", str(out), "--batch-size", "2", *FAST)
    assert code == 1, output
    assert "skipped" in output and "broken.png" in output and "not a readable image" in output
    assert sorted(p.name for p in out.iterdir()) == ["card", "poster"]
    assert "decomposed 2 of 3" in output


def test_bad_options_are_one_line_exit_2(tmp_path: Path) -> None:
    code, output = _run(str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "no such file" in output and "Traceback" not in output
    src = _inputs(tmp_path / "in")
    code, output = _run(str(src), "--out", str(tmp_path / "o"), "--protocol", "paper", *FAST)
    assert code == 2 and "--protocol 'paper'" in output
    code, output = _run(str(src), "--out", str(tmp_path / "o"), "--adapter", str(tmp_path / "nope"), *FAST)
    assert code == 2 and "--adapter:" in output and "does not exist" in output
