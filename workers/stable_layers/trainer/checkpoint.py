"""What a training checkpoint holds, and putting it back.

A checkpoint directory (committed to the store by `storage.commit_checkpoint`, COMMITTED last)::

    lora/pytorch_lora_weights.safetensors   the adapter to evaluate or serve, diffusers format
                                            (EMA weights when grpo.ema is on)
    lora/adapter_config.json                the same adapter as a PEFT folder:
    lora/adapter_model.safetensors          PeftModel.from_pretrained(transformer, "<ckpt>/lora")
    trainer.pt                              optimizer state (every ZeRO shard), EMA, every rank's
                                            RNG states, the raw LoRA tensors when EMA is on
    trainer.json                            loop position: step, iteration, data epoch/offset
    run.yaml                                the RunSpec that trained it

Resume restores the LoRA tensors in place, then the optimizer, EMA, RNG and data position, so a
resumed run continues exactly as the uninterrupted one would (tests/test_train_resume.py). The
loop itself derives all its randomness from seeds (collect.py); RNG states are saved anyway so
that library code drawing from global generators cannot break that.

`trainer.pt` is a pickle (DeepSpeed's optimizer shards are not plain tensors): it is only loaded
from a checkpoint whose files passed the COMMITTED manifest's sha256 check.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stable_layers.spec import RunSpec
from stable_layers.trainer.distributed import DistContext, TrainEngine

LORA_DIR = "lora"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "trainer.json"
SPEC_FILE = "run.yaml"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


@dataclass
class LoopState:
    """Where the loop is. `step` counts optimizer steps done; the data stream resumes at
    (`epoch`, `offset`) images; `iteration_complete` is false only for a run stopped by
    `maxSteps` in the middle of an iteration (resume then starts the next iteration)."""

    step: int = 0
    iteration: int = 0
    epoch: int = 0
    offset: int = 0
    iteration_complete: bool = True
    samples: int = 0


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    local_dir: str | Path,
    *,
    spec: RunSpec,
    policy: Any,
    engine: TrainEngine,
    ctx: DistContext,
    loop: LoopState,
    ema: Any | None = None,
) -> None:
    """Write the checkpoint files into `local_dir` (a collective: every rank calls it; rank 0
    writes). Committing it to the store is the caller's job."""
    from stable_layers.policy import save_lora

    rng = ctx.all_gather_object(capture_rng())
    optimizer = engine.optimizer_state(ctx)
    if not ctx.is_main:
        return
    out = Path(local_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer: dict[str, Any] = {"format": FORMAT, "optimizer": optimizer, "rng": rng}
    if ema is not None:
        trainer["ema"] = ema.state_dict()
        trainer["lora_params"] = [p.detach().cpu().clone() for p in policy.lora_params]
        ema.swap()
        try:
            save_lora(policy, out / LORA_DIR)
        finally:
            ema.swap()
    else:
        save_lora(policy, out / LORA_DIR)
    _atomic_write(out / TRAINER_FILE, lambda p: torch.save(trainer, p))
    body = {"format": FORMAT, **asdict(loop), "worldSize": ctx.world_size, "engine": spec.distributed.engine}
    _atomic_write(out / STATE_FILE, lambda p: p.write_text(json.dumps(body, indent=1, sort_keys=True)))
    _atomic_write(out / SPEC_FILE, lambda p: p.write_text(spec.to_yaml()))


def read_loop_state(local_dir: str | Path) -> LoopState:
    path = Path(local_dir) / STATE_FILE
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: cannot read the trainer state ({err}); resume from another checkpoint"
        ) from None
    names = LoopState.__dataclass_fields__
    return LoopState(**{k: v for k, v in body.items() if k in names})


def load_weights(local_dir: str | Path, policy: Any) -> None:
    """Put the checkpoint's trainable LoRA tensors into the policy, in place (before the engine is
    built, so the engine's own copies start from them)."""
    from stable_layers.policy import PolicyLoadError, load_lora

    local = Path(local_dir)
    trainer = _load_trainer(local)
    if "lora_params" in trainer:  # EMA run: lora/ holds the averages, the raw tensors are here
        saved = trainer["lora_params"]
        if len(saved) != len(policy.lora_params):
            raise CheckpointError(
                f"{local / TRAINER_FILE}: {len(saved)} LoRA tensors, the policy has {len(policy.lora_params)}"
            )
        with torch.no_grad():
            for p, v in zip(policy.lora_params, saved, strict=True):
                p.copy_(v)
        return
    try:
        load_lora(policy, local / LORA_DIR)
    except PolicyLoadError as err:
        raise CheckpointError(str(err)) from None


def _load_trainer(local: Path) -> dict[str, Any]:
    path = local / TRAINER_FILE
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: unreadable trainer state ({err}); resume from another checkpoint") from None
    if not isinstance(trainer, dict) or trainer.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trainer state of format {FORMAT}")
    return trainer


def load_training_state(
    local_dir: str | Path, *, engine: TrainEngine, ctx: DistContext, ema: Any | None = None
) -> LoopState:
    """Optimizer, EMA and this rank's RNG from the checkpoint; returns the loop position."""
    local = Path(local_dir)
    trainer = _load_trainer(local)
    loop = read_loop_state(local)
    try:
        engine.load_optimizer_state(trainer["optimizer"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{local / TRAINER_FILE}: cannot restore the optimizer ({err})") from None
    if ema is not None:
        if "ema" not in trainer:
            raise CheckpointError(f"{local / TRAINER_FILE}: the run has grpo.ema on but the checkpoint has no EMA")
        ema.load_state_dict(trainer["ema"])
    rngs = trainer.get("rng") or []
    if rngs:
        restore_rng(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
    return loop
