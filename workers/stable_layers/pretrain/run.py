"""`stable-layers pretrain-tiny`: train the tiny layer-decomposition model from scratch on CPU.

Two phases on synthetic designs (`data.synthetic`, training seeds only):
  1. the RGBA `AutoencoderKLQwenImage` (8x, z_dim 16) as an autoencoder of layers and composites
     (`pretrain_vae`), then its latent statistics, stored as `latents_mean/std` in its config;
  2. the layered `QwenImageTransformer2DModel` with the flow-matching objective (`pretrain_dit`),
     conditioned on a fixed prompt embedding of a tiny frozen text encoder.
The result is a `QwenImageLayeredPipeline` directory (safetensors) that `from_pretrained` loads.

Resumable and deterministic: every step's data and noise are a pure function of (seed, step), and
checkpoints (model + optimizer + loss history) are written to `<out>.work/` with write-then-rename,
so `--resume` continues bit-for-bit where an interrupted run stopped. The finished pipeline is
written to `<out>.staging/` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stable_layers.data import split_seeds
from stable_layers.pretrain.config import Phase, PretrainConfig


class PretrainError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


# --- small utilities ----------------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    warm = max(1, int(total * warmup_fraction))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.45 * (1 + np.cos(np.pi * min(t, 1.0))))


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, phase: Phase) -> None:
    if not path.is_file():
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise PretrainError(f"{path}: unreadable checkpoint ({err}); delete it to restart that phase") from err
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    phase.step, phase.history, phase.evals = state["step"], state["history"], state["evals"]
    phase.seconds = state.get("seconds", 0.0)


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, phase: Phase) -> None:
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": phase.step,
            "history": phase.history,
            "evals": phase.evals,
            "seconds": phase.seconds,
        },
        path,
    )


StepFn = Callable[[int], dict[str, float]]
EvalFn = Callable[[], dict[str, float]]


def run_phase(
    phase: Phase,
    total: int,
    step_fn: StepFn,
    eval_fn: EvalFn,
    save: Callable[[], None],
    cfg: PretrainConfig,
    reporter: Any,
) -> None:
    """The shared loop: steps from `phase.step` to `total`, evaluating every `eval_every` and at
    the end, checkpointing every `checkpoint_every` and at the end."""
    reporter.start(phase.name, total, phase.step)
    if phase.step == 0 and not phase.evals:  # the untrained model: where the curves start
        phase.evals.append({"step": 0, **eval_fn()})
    while phase.step < total:
        t0 = time.perf_counter()
        record = step_fn(phase.step)
        phase.seconds += time.perf_counter() - t0
        phase.step += 1
        phase.history.append({"step": phase.step, **record})
        done = phase.step == total
        if phase.step % cfg.eval_every == 0 or done:
            phase.evals.append({"step": phase.step, **eval_fn()})
            reporter.log(phase.name, phase.step, total, phase.evals[-1])
        if phase.step % cfg.checkpoint_every == 0 or done:
            save()
        reporter.advance(phase.name, record)
    if not phase.evals or phase.evals[-1]["step"] != total:
        phase.evals.append({"step": total, **eval_fn()})
    reporter.stop(phase.name)


# --- the run ------------------------------------------------------------------------------------


def build_components(cfg: PretrainConfig) -> dict[str, Any]:
    """Fresh components of the tiny pipeline, from the policy's builders (`stable_layers.policy.tiny`)."""
    from stable_layers.policy import build_scheduler, build_text_encoder, build_transformer, build_vae
    from stable_layers.pretrain.dit import compact_tokenizer

    tokenizer = compact_tokenizer()
    return {
        "tokenizer": tokenizer,
        "text_encoder": build_text_encoder(tokenizer, hidden_size=cfg.text_dim, seed=cfg.seed + 2),
        "vae": build_vae(
            base_dim=cfg.vae_base_dim,
            num_res_blocks=cfg.vae_num_res_blocks,
            dim_mult=cfg.vae_dim_mult,
            seed=cfg.seed + 1,
        ),
        "transformer": build_transformer(
            num_layers=cfg.dit_layers,
            attention_head_dim=cfg.dit_head_dim,
            num_attention_heads=cfg.dit_heads,
            joint_attention_dim=cfg.text_dim,
            axes_dims_rope=cfg.axes_dims_rope,
            seed=cfg.seed,
        ),
        "scheduler": build_scheduler(),
    }


def _prepare_work_dir(out: Path, cfg: PretrainConfig, resume: bool) -> Path:
    work = out.with_name(out.name + ".work")
    cfg_path = work / "config.json"
    if work.exists() and not resume:
        raise PretrainError(f"{work} holds an unfinished run; pass --resume to continue it, or delete it to start over")
    if resume and cfg_path.is_file():
        saved = PretrainConfig.from_json(json.loads(cfg_path.read_text()))
        if saved != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in asdict(saved).items() if getattr(cfg, k) != v}
            raise PretrainError(
                f"{cfg_path}: --resume with a different configuration {diff} (saved, requested); "
                "use the saved options or delete the work directory"
            )
    work.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(cfg_path, json.dumps(cfg.to_json(), indent=2))
    return work


def train_vae(vae: Any, cfg: PretrainConfig, work: Path, reporter: Any) -> Phase:
    from stable_layers.pretrain.vae import (
        apply_latent_path_gain,
        frame_batch,
        image_processor,
        reconstruction_metrics,
        vae_loss,
    )

    proc = image_processor()
    phase = Phase("vae")
    if cfg.vae_latent_gain != 1.0:
        apply_latent_path_gain(vae, cfg.vae_latent_gain)  # a resumed run overwrites it from the checkpoint
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt = work / "vae.pt"
    _load_checkpoint(ckpt, vae, opt, phase)
    held = split_seeds("heldout", 8)
    val_frames = frame_batch(
        held, 48, cfg.resolution, cfg.design_size, cfg.max_elements, np.random.default_rng(0), proc
    )
    pool = cfg.dit_designs + cfg.stats_designs  # the designs the transformer will also see

    def step(i: int) -> dict[str, float]:
        vae.train()
        rng = np.random.default_rng([cfg.seed, 1, i])
        seeds = split_seeds("train", pool)
        chosen = [seeds[j] for j in rng.choice(len(seeds), size=cfg.vae_designs_per_step, replace=False)]
        x = frame_batch(chosen, cfg.vae_batch, cfg.resolution, cfg.design_size, cfg.max_elements, rng, proc)
        for group in opt.param_groups:
            group["lr"] = lr_at(i, cfg.vae_steps, cfg.vae_lr, cfg.warmup_fraction)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        loss, parts = vae_loss(
            vae, x, gen, cfg.vae_kl_weight, cfg.vae_latent_noise, cfg.vae_mse_weight, cfg.vae_transparent_rgb_weight
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), **parts}

    def evaluate() -> dict[str, float]:
        vae.eval()
        return reconstruction_metrics(vae, val_frames)

    run_phase(phase, cfg.vae_steps, step, evaluate, lambda: _save_checkpoint(ckpt, vae, opt, phase), cfg, reporter)
    vae.eval().requires_grad_(False)
    return phase


def encode_data(vae: Any, cfg: PretrainConfig, work: Path) -> tuple[Any, Any, list[float], list[float]]:
    """Latent stats (stored in the VAE config) and the encoded training / held-out latents (cached
    in the work dir: recomputing them is deterministic but costs a minute)."""
    from stable_layers.pretrain.dit import LatentSet, encode_designs
    from stable_layers.pretrain.vae import canonical_tensor_order, design_tensors, image_processor, latent_stats

    cache = work / "latents.pt"
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=False)
        mean, std = saved["mean"], saved["std"]
        train, val = LatentSet(saved["train"]), LatentSet(saved["val"])
    else:
        proc = image_processor()

        def pixels(seeds: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            out = [design_tensors(s, cfg.resolution, cfg.design_size, cfg.max_elements, proc) for s in seeds]
            if cfg.dit_canonical_order:
                out = [(comp, layers[canonical_tensor_order(layers)]) for comp, layers in out]
            return out

        stats_px = pixels(split_seeds("train", cfg.stats_designs, start=cfg.dit_designs))
        frames = torch.stack([f for comp, lay in stats_px for f in (comp, *lay)]).unsqueeze(2)
        mean, std = latent_stats(vae, frames)
        m, s = torch.tensor(mean), torch.tensor(std)
        train = encode_designs(vae, pixels(split_seeds("train", cfg.dit_designs)), m, s)
        val = encode_designs(vae, pixels(split_seeds("heldout", cfg.val_designs)), m, s)
        atomic_torch_save({"mean": mean, "std": std, "train": train.frames, "val": val.frames}, cache)
    vae.register_to_config(latents_mean=list(mean), latents_std=list(std))
    return train, val, list(mean), list(std)


def train_transformer(
    transformer: Any, train: Any, val: Any, embeds: torch.Tensor, mask: torch.Tensor | None, cfg: PretrainConfig,
    work: Path, reporter: Any, transparent: torch.Tensor | None = None,
) -> Phase:  # fmt: skip
    """`transparent`: `pretrain_dit.transparent_latent`, needed when `cfg.dit_content_weight` ≠ 1."""
    from stable_layers.pretrain.dit import content_weights, flow_matching_loss, step_batch, validation_loss

    if cfg.dit_content_weight != 1 and transparent is None:
        raise ValueError("dit_content_weight != 1 needs the transparent latent (pretrain_dit.transparent_latent)")

    phase = Phase("transformer")
    opt = torch.optim.AdamW(transformer.parameters(), lr=cfg.dit_lr, weight_decay=0.01)
    ckpt = work / "transformer.pt"
    _load_checkpoint(ckpt, transformer, opt, phase)

    def step(i: int) -> dict[str, float]:
        transformer.train()
        x0, sigmas, noise = step_batch(train, cfg.dit_batch, cfg.seed, i, cfg.dit_logit_mean)
        for group in opt.param_groups:
            group["lr"] = lr_at(i, cfg.dit_steps, cfg.dit_lr, cfg.warmup_fraction)
        weights = None
        if transparent is not None and cfg.dit_content_weight != 1:
            weights = content_weights(x0, transparent, cfg.dit_content_weight, cfg.dit_content_threshold)
        loss = flow_matching_loss(transformer, x0, sigmas, noise, embeds, mask, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "layers": float(x0.shape[1] - 1)}

    def evaluate() -> dict[str, float]:
        transformer.eval()
        return {"val_loss": validation_loss(transformer, val, embeds, mask)}

    run_phase(
        phase, cfg.dit_steps, step, evaluate, lambda: _save_checkpoint(ckpt, transformer, opt, phase), cfg, reporter
    )
    transformer.eval().requires_grad_(False)
    return phase


def pretrain_tiny(out: str | Path, cfg: PretrainConfig, *, resume: bool = False, reporter: Any = None,
                  keep_work: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train both phases and write the pipeline to `out`; returns the training summary (also
    written as `out/training.json`). See the module docstring for the resume/atomicity contract."""
    from diffusers import QwenImageLayeredPipeline

    from stable_layers.pretrain.dit import transparent_latent
    from stable_layers.pretrain.report import NullReporter, plot_losses

    reporter = reporter or NullReporter()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    work = _prepare_work_dir(out, cfg, resume)
    t_start = time.perf_counter()
    comps = build_components(cfg)
    vae_phase = train_vae(comps["vae"], cfg, work, reporter)
    t0 = time.perf_counter()
    train, val, mean, std = encode_data(comps["vae"], cfg, work)
    encode_seconds = time.perf_counter() - t0
    pipe = QwenImageLayeredPipeline(processor=None, **comps)
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(prompt=[cfg.prompt], device=torch.device("cpu"))
    transparent = None
    if cfg.dit_content_weight != 1:
        transparent = transparent_latent(comps["vae"], torch.tensor(mean), torch.tensor(std), cfg.resolution)
    dit_phase = train_transformer(comps["transformer"], train, val, embeds, mask, cfg, work, reporter, transparent)

    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    summary = {
        "config": cfg.to_json(),
        "parameters": {k: sum(p.numel() for p in comps[k].parameters()) for k in ("vae", "transformer", "text_encoder")},
        "prompt_tokens": int(embeds.shape[1]),
        "latents_mean": mean,
        "latents_std": std,
        "train_designs_by_layers": {str(k): v for k, v in train.counts.items()},
        "vae": {"steps": vae_phase.step, "seconds": round(vae_phase.seconds, 1), "evals": vae_phase.evals,
                "final_loss": _tail_mean(vae_phase.history)},
        "transformer": {"steps": dit_phase.step, "seconds": round(dit_phase.seconds, 1), "evals": dit_phase.evals,
                        "final_loss": _tail_mean(dit_phase.history)},
        "encode_seconds": round(encode_seconds, 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    _atomic_write_text(staging / "training.json", json.dumps(summary, indent=2))
    plot_losses(vae_phase, dit_phase, staging / "loss_curve.png")
    _swap_into_place(staging, out)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _tail_mean(history: list[dict[str, float]], n: int = 50) -> float:
    tail = [h["loss"] for h in history[-n:]]
    return round(float(np.mean(tail)), 5) if tail else float("nan")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` by the finished `staging` dir; a model card already in `out` is kept (the card
    command rewrites its numbers)."""
    if out.exists():
        card = out / "MODEL_CARD.md"
        if card.is_file():
            shutil.copy2(card, staging / "MODEL_CARD.md")
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
