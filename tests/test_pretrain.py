"""`pretrain-tiny` on a micro configuration: loss goes down, resume is exact, the output is a
loadable pipeline, and bad resumes are refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stable_layers.pretrain.config import PretrainConfig
from stable_layers.pretrain.run import PretrainError, lr_at, pretrain_tiny

MICRO = PretrainConfig(
    resolution=32,
    design_size=64,
    max_elements=2,
    vae_steps=12,
    vae_batch=8,
    vae_designs_per_step=3,
    vae_lr=5e-3,
    vae_base_dim=8,
    vae_dim_mult=(1, 1, 1, 1),
    stats_designs=8,
    dit_steps=16,
    dit_batch=8,
    dit_lr=2e-3,
    dit_layers=1,
    dit_heads=2,
    dit_head_dim=16,
    axes_dims_rope=(8, 4, 4),
    text_dim=16,
    dit_designs=24,
    val_designs=6,
    checkpoint_every=4,
    eval_every=8,
)


class Interrupt(Exception):
    pass


class StopAfter:
    """A reporter that interrupts the run after `n` steps of `phase` (like Ctrl-C or a kill)."""

    def __init__(self, phase: str, n: int) -> None:
        self.phase, self.n, self.seen = phase, n, 0

    def start(self, name: str, total: int, done: int) -> None: ...
    def log(self, name: str, step: int, total: int, evals: dict[str, float]) -> None: ...
    def stop(self, name: str) -> None: ...

    def advance(self, name: str, record: dict[str, float]) -> None:
        if name == self.phase:
            self.seen += 1
            if self.seen == self.n:
                raise Interrupt


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    summary = pretrain_tiny(out, MICRO)
    return out, summary


def test_a_few_steps_reduce_both_losses(trained: tuple[Path, dict]) -> None:
    _, summary = trained
    vae_evals = summary["vae"]["evals"]
    dit_evals = summary["transformer"]["evals"]
    assert vae_evals[0]["step"] == 0 and vae_evals[-1]["step"] == MICRO.vae_steps
    assert vae_evals[-1]["val_psnr"] > vae_evals[0]["val_psnr"] + 0.5, vae_evals
    assert dit_evals[0]["step"] == 0 and dit_evals[-1]["step"] == MICRO.dit_steps
    assert dit_evals[-1]["val_loss"] < 0.9 * dit_evals[0]["val_loss"], dit_evals


def test_output_is_a_loadable_pipeline(trained: tuple[Path, dict]) -> None:
    from diffusers import QwenImageLayeredPipeline

    out, summary = trained
    assert not out.with_name(out.name + ".work").exists(), "the work dir is removed after a finished run"
    assert not out.with_name(out.name + ".staging").exists()
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert json.loads((out / "training.json").read_text())["config"]["seed"] == MICRO.seed
    assert list(out.glob("*/*.safetensors")), "weights are safetensors"
    pipe = QwenImageLayeredPipeline.from_pretrained(out, processor=None)
    assert pipe.vae.config.latents_mean == summary["latents_mean"]
    assert pipe.vae.config.latents_std == summary["latents_std"]
    assert all(s > 0 for s in summary["latents_std"])
    assert pipe.transformer.config.use_layer3d_rope and pipe.transformer.config.use_additional_t_cond
    assert pipe.transformer.config.num_layers == MICRO.dit_layers
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt=[MICRO.prompt], device=torch.device("cpu"))
    assert embeds.shape[1] == summary["prompt_tokens"] == 41, "compact tokenizer survives save/load"


def test_resume_continues_bit_for_bit(tmp_path: Path, trained: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    reference, _ = trained
    out = tmp_path / "tiny"
    # killed after 6 transformer steps; the last checkpoint is at step 4 (checkpoint_every=4)
    with pytest.raises(Interrupt):
        pretrain_tiny(out, MICRO, reporter=StopAfter("transformer", 6))
    work = out.with_name("tiny.work")
    assert (work / "vae.pt").is_file() and (work / "transformer.pt").is_file() and not out.exists()
    assert torch.load(work / "transformer.pt", weights_only=False)["step"] == 4

    with pytest.raises(PretrainError, match="--resume"):
        pretrain_tiny(out, MICRO)
    other = PretrainConfig(**{**MICRO.__dict__, "dit_lr": 1e-4})
    with pytest.raises(PretrainError, match="dit_lr"):
        pretrain_tiny(out, other, resume=True)

    summary = pretrain_tiny(out, MICRO, resume=True)
    assert summary["transformer"]["steps"] == MICRO.dit_steps
    for part in ("transformer", "vae"):
        got = load_file(next((out / part).glob("*.safetensors")))
        want = load_file(next((reference / part).glob("*.safetensors")))
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"{part}.{k} differs after resume"


def test_config_validation_and_schedule() -> None:
    with pytest.raises(ValueError, match="resolution"):
        PretrainConfig(resolution=40)
    with pytest.raises(ValueError, match="axes_dims_rope"):
        PretrainConfig(dit_head_dim=32, axes_dims_rope=(8, 4, 4))
    with pytest.raises(ValueError, match="unknown"):
        PretrainConfig.from_json({"sead": 1})
    with pytest.raises(ValueError, match="dit_content_weight"):
        PretrainConfig(dit_content_weight=0.0)
    assert PretrainConfig.from_json(MICRO.to_json()) == MICRO
    lrs = [lr_at(i, 100, 1.0, 0.1) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and lrs[50] > lrs[90]


def test_content_weighting_reaches_the_transformer_and_nothing_else(tmp_path: Path, trained: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "weighted"
    pretrain_tiny(out, PretrainConfig(**{**MICRO.__dict__, "dit_content_weight": 10.0}))
    plain_dir = trained[0]

    def tensors(d: Path, part: str) -> dict[str, torch.Tensor]:
        return load_file(next((d / part).glob("*.safetensors")))

    vae, plain_vae = tensors(out, "vae"), tensors(plain_dir, "vae")
    assert vae.keys() == plain_vae.keys() and all(torch.equal(vae[k], plain_vae[k]) for k in vae)
    plain, weighted = tensors(plain_dir, "transformer"), tensors(out, "transformer")
    assert any(not torch.equal(weighted[k], plain[k]) for k in plain)
    assert json.loads((out / "training.json").read_text())["config"]["dit_content_weight"] == 10.0
