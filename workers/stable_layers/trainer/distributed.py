"""Process groups and the optimizer engine (DeepSpeed ZeRO or plain torch) of the trainer.

* `init_distributed` joins the process group described by the launcher's environment (`RANK`,
  `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` — set by torchrun, the deepspeed
  launcher, or `stable-layers train --nproc-per-node`), nccl with CUDA and gloo on CPU. A single
  process with the DeepSpeed engine still gets a one-rank group: DeepSpeed otherwise falls back to
  MPI discovery and fails (shared/docs/deepspeed-cpu.md). `DistContext.close` destroys the group
  (without it 1 in 10 CPU runs aborted at exit).
* `deepspeed_config` turns a `RunSpec` into DeepSpeed's config dict; `check_deepspeed_config`
  validates it with DeepSpeed's own `DeepSpeedConfig`, so a bad combination fails before any
  model is loaded.
* `build_engine` wraps the LoRA parameters into a `TrainEngine` with one interface for both
  backends: `backward(loss, boundary)` accumulates, `step()` reduces across ranks, clips and
  applies AdamW. The number of micro-batches per optimizer step varies (zero-advantage samples
  are dropped), so the accumulation boundary is set by the caller, never counted by DeepSpeed,
  and the caller weights the loss itself (`scale_wrt_gas=False`).

Gradients are averaged across ranks by both engines, so a rank must weight its loss by
`world_size / global_count` to reproduce the single-process mean (loop.py does).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from stable_layers.spec import RunSpec, SpecError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) when absent."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_launched_worker() -> bool:
    """True inside a process started by torchrun / the deepspeed launcher."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class DistContext:
    """Where this process sits in the job, with the few collectives the trainer needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None and torch.distributed.is_initialized()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled; for small per-iteration records)."""
        if not self.active or self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active or self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            torch.distributed.barrier()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce (mean) the gradients of `params` (the torch engine's data parallelism)."""
        if not self.active or self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(spec: RunSpec, device: torch.device) -> DistContext:
    """Join the launcher's process group (or make a one-rank one for DeepSpeed)."""
    rank, world, local_rank = env_world()
    dist_spec = spec.distributed
    if world == 1 and dist_spec.engine == "torch":
        return DistContext()
    if world == 1:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise SpecError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; start workers with "
            "`stable-layers train --nproc-per-node N`, torchrun or the deepspeed launcher"
        )
    backend = dist_spec.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=dist_spec.timeout_minutes)
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, owns_group=owns)


def nominal_accumulation(spec: RunSpec, world_size: int) -> int:
    """Micro-batches per optimizer step per rank when no sample is dropped."""
    g = spec.grpo
    if g.gradient_accumulation_steps is not None:
        return g.gradient_accumulation_steps
    per_rank = g.images_per_iteration * g.group_size // max(1, world_size)
    micro_batches = max(1, -(-per_rank // g.micro_batch_size))
    return max(1, micro_batches // g.optimizer_steps_per_iteration)


def deepspeed_config(spec: RunSpec, world_size: int = 1) -> dict[str, Any]:
    """DeepSpeed's config for this run. Mixed precision stays off: only the fp32 LoRA tensors are
    handed to DeepSpeed; the frozen base keeps `model.dtype` and is never touched by the engine."""
    g = spec.grpo
    gas = nominal_accumulation(spec, world_size)
    return {
        "train_micro_batch_size_per_gpu": g.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "train_batch_size": g.micro_batch_size * gas * world_size,
        "gradient_clipping": g.max_grad_norm,
        "zero_optimization": {"stage": spec.distributed.zero_stage},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def check_deepspeed_config(cfg: dict[str, Any], world_size: int = 1) -> None:
    """Validate with DeepSpeed's `DeepSpeedConfig`; raise `SpecError` naming the problem."""
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = dict(cfg)
    # DeepSpeedConfig checks train_batch_size against the world size of an initialised group,
    # or 1; validate the per-rank numbers and re-derive the global batch ourselves.
    expected = probe.pop("train_batch_size", None)
    try:
        DeepSpeedConfig(probe)
    except (AssertionError, ValueError) as err:
        raise SpecError(f"distributed: DeepSpeed rejects the generated config: {err}") from None
    mb, gas = probe["train_micro_batch_size_per_gpu"], probe["gradient_accumulation_steps"]
    if expected is not None and expected != mb * gas * world_size:
        raise SpecError(f"distributed: train_batch_size {expected} != {mb} x {gas} x {world_size} ranks")


class TrainEngine(Protocol):
    """What the loop drives: accumulate, then one optimizer step."""

    params: list[torch.Tensor]

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None: ...

    def step(self) -> float:
        """Reduce, clip, update; returns the global grad norm before clipping."""
        ...

    def optimizer_state(self, ctx: DistContext) -> dict[str, Any] | None:
        """The full optimizer state on rank 0 (None elsewhere); a collective for DeepSpeed."""
        ...

    def load_optimizer_state(self, state: dict[str, Any]) -> None: ...


def _adamw(spec: RunSpec, params: list[torch.Tensor]) -> torch.optim.AdamW:
    g = spec.grpo
    return torch.optim.AdamW(params, lr=g.lr, betas=g.adam_betas, eps=g.adam_eps, weight_decay=g.weight_decay)


class TorchEngine:
    """Plain torch: AdamW, gradients all-reduced by hand when there are several ranks."""

    def __init__(self, spec: RunSpec, params: list[torch.Tensor], ctx: DistContext):
        self.params = params
        self.ctx = ctx
        self.max_grad_norm = spec.grpo.max_grad_norm
        self.optimizer = _adamw(spec, params)

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        loss.backward()

    def step(self) -> float:
        self.ctx.average_gradients(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def optimizer_state(self, ctx: DistContext) -> dict[str, Any] | None:
        # Every rank holds the same state (same averaged gradients), so rank 0's is the state.
        return {"engine": "torch", "state": self.optimizer.state_dict()} if ctx.is_main else None

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if state.get("engine") != "torch":
            raise ValueError(f"checkpoint optimizer state is from engine {state.get('engine')!r}, the run uses 'torch'")
        self.optimizer.load_state_dict(state["state"])


class DeepSpeedEngine:
    """`deepspeed.initialize` over the transformer with only the LoRA tensors as parameters."""

    def __init__(self, spec: RunSpec, module: torch.nn.Module, params: list[torch.Tensor], ctx: DistContext):
        import deepspeed

        cfg = deepspeed_config(spec, ctx.world_size)
        check_deepspeed_config(cfg, ctx.world_size)
        self.params = params
        self.stage = spec.distributed.zero_stage
        if self.stage == 3:
            raise SpecError(
                "distributed.zeroStage: 3 is not supported by this trainer yet (it partitions the frozen base "
                "and the sampler calls the transformer outside the engine); use 2"
            )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=params, optimizer=_adamw(spec, params), config=cfg
        )

    def backward(self, loss: torch.Tensor, *, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def optimizer_state(self, ctx: DistContext) -> dict[str, Any] | None:
        # ZeRO partitions the optimizer state over ranks: gather every shard to rank 0 so one
        # checkpoint directory (committed by rank 0) holds all of it, on any number of nodes.
        shard = self.engine.optimizer.state_dict()
        shards = ctx.all_gather_object(shard)
        if not ctx.is_main:
            return None
        return {"engine": "deepspeed", "zero_stage": self.stage, "world_size": ctx.world_size, "shards": shards}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if state.get("engine") != "deepspeed":
            raise ValueError(
                f"checkpoint optimizer state is from engine {state.get('engine')!r}, the run uses 'deepspeed'"
            )
        self.engine.optimizer.load_state_dict(state["shards"], load_optimizer_states=True, load_from_fp32_weights=True)


def build_engine(spec: RunSpec, module: torch.nn.Module, params: list[torch.Tensor], ctx: DistContext) -> TrainEngine:
    if spec.distributed.engine == "deepspeed":
        return DeepSpeedEngine(spec, module, params, ctx)
    return TorchEngine(spec, params, ctx)
