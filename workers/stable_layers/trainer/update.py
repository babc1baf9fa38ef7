"""The policy update of one iteration: replay, accumulate, `optimizerStepsPerIteration` steps.

Each rank replays its own kept samples (advantage != 0) in micro-batches of at most
`grpo.microBatchSize` candidates of one rollout, and for every micro-batch every trained SDE step
k: log-prob and mean under the current LoRA (with gradient), the reference mean under the
disabled adapter when `klBeta > 0`, the surrogate of `grpo.py`, then backward. The iteration
makes `optimizerStepsPerIteration` optimizer steps (or as many as `gradientAccumulationSteps`
micro-batches per step need): the first is on-policy, later ones slightly off-policy
(method.md §1.3E). Step n trains the n-th slice of candidate indices of every group (see
`plan_micro_batches`), so the split does not depend on the number of ranks.

Equal work across ranks: DeepSpeed reduces gradients inside every backward, so every rank must
call backward equally often. Ranks with fewer kept samples pad with zero-weight micro-batches.
Each (sample, step) term is weighted `world_size / (N·K)` — N the kept samples of the step over
all ranks, K trained steps — so the rank-averaged gradient is exactly the mean over the step, the
same as one process training the whole batch (tested against plain torch).

A step with no kept sample on any rank (every group had identical rewards) makes no optimizer
update but still counts as a step (`skipped: true` in its record), so `maxSteps` always ends the
run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stable_layers.spec import RunSpec
from stable_layers.trainer.collect import IterationBatch
from stable_layers.trainer.distributed import DistContext, TrainEngine
from stable_layers.trainer.grpo import RatioConfig, SurrogateOutput, summarize, surrogate


class LoraEMA:
    """EMA of the trainable tensors, updated every `every` optimizer steps with decay
    `min((1+s)/(10+s), decay)` where s is the optimizer step (flow_grpo's warm-up: it counts
    optimizer steps, not EMA updates, so with `every: 8` the decay at step 40 is 0.82, not the
    0.40 of the fifth update); `swap()` puts the averages in place temporarily."""

    def __init__(self, params: list[torch.Tensor], decay: float, every: int):
        self.params, self.decay, self.every = params, decay, every
        self.shadow = [p.detach().clone() for p in params]
        self.updates = 0

    @torch.no_grad()
    def maybe_update(self, step: int) -> None:
        if step % self.every:
            return
        d = self.current_decay(step)
        for s, p in zip(self.shadow, self.params, strict=True):
            s.mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1

    def current_decay(self, step: int) -> float:
        """The decay an update at optimizer step `step` (steps done, 1-based) uses."""
        return min((1 + step) / (10 + step), self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.cpu() for s in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)
        self.updates = int(state["updates"])

    def swap(self) -> None:
        """Exchange live weights and averages (call twice to undo)."""
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                tmp = p.detach().clone()
                p.copy_(s)
                s.copy_(tmp)


@dataclass
class MicroBatch:
    rollout: Any  # sampler.Rollout
    index: list[int]
    advantages: torch.Tensor
    dummy: bool = False


@dataclass
class StepResult:
    """One optimizer step's diagnostics (identical on every rank)."""

    diagnostics: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    grad_norm: float = float("nan")
    skipped: bool = False
    update_seconds: float = 0.0
    steps_in_iteration: int = 1


def num_steps(spec: RunSpec, world_size: int) -> int:
    """Optimizer steps of one iteration."""
    g = spec.grpo
    if g.gradient_accumulation_steps is None:
        return g.optimizer_steps_per_iteration
    per_rank = g.images_per_iteration * g.group_size // world_size
    micro_batches = -(-per_rank // g.micro_batch_size)
    return max(1, -(-micro_batches // g.gradient_accumulation_steps))


def plan_micro_batches(
    batch: IterationBatch, micro_batch_size: int, steps: int, group_size: int
) -> list[list[MicroBatch]]:
    """This rank's kept samples, per optimizer step, in micro-batches that never cross a rollout.

    Step n trains candidates `array_split(range(G), steps)[n]` of every group: each step sees
    every group (positive and negative advantages alike), every rank takes part in every step, and
    which sample lands in which step does not depend on the number of ranks.
    """
    step_of = {int(c): n for n, part in enumerate(np.array_split(np.arange(group_size), steps)) for c in part}
    plan: list[list[MicroBatch]] = [[] for _ in range(steps)]
    for lr in batch.rollouts:
        for n in range(steps):
            kept = [(j, c) for j, c in enumerate(lr.cands) if step_of[c] == n and batch.keep[(lr.image_index, c)]]
            for start in range(0, len(kept), micro_batch_size):
                part = kept[start : start + micro_batch_size]
                adv = torch.tensor([batch.advantages[(lr.image_index, c)] for _, c in part], dtype=torch.float32)
                plan[n].append(MicroBatch(lr.rollout, [j for j, _ in part], adv))
    return plan


def _replay(policy: Any, mb: MicroBatch, k: int, cfg: RatioConfig) -> SurrogateOutput:
    from stable_layers.policy import reference_policy, replay_log_prob

    r, idx = mb.rollout, mb.index
    logp, mean, _ = replay_log_prob(policy, r, idx, k)
    ref_mean = None
    if cfg.kl_beta > 0:
        with reference_policy(policy):
            _, ref_mean, _ = replay_log_prob(policy, r, idx, k)
    return surrogate(
        logp,
        r.log_probs[idx, k],
        mb.advantages.to(logp.device),
        cfg,
        mean=mean,
        old_mean=r.means[idx, k],
        ref_mean=ref_mean,
        step_std=r.stds[idx, k],
        dt=r.sigmas[idx, k] - r.sigmas_next[idx, k],
    )


def update_steps(
    spec: RunSpec,
    policy: Any,
    engine: TrainEngine,
    batch: IterationBatch,
    ctx: DistContext,
    *,
    ema: LoraEMA | None = None,
    first_step: int = 0,
) -> Iterator[StepResult]:
    """Run the iteration's optimizer steps, yielding after each (the caller may stop early)."""
    cfg = RatioConfig.from_spec(spec.grpo)
    steps = num_steps(spec, ctx.world_size)
    plan = plan_micro_batches(batch, spec.grpo.micro_batch_size, steps, spec.grpo.group_size)
    sizes = ctx.all_gather_object([[len(mb.index) for mb in mbs] for mbs in plan])
    k_steps = int(batch.rollouts[0].rollout.latents.shape[1])
    dummy = MicroBatch(batch.rollouts[0].rollout, [0], torch.zeros(1), dummy=True)
    for n in range(steps):
        t0 = time.perf_counter()
        total = sum(sum(s[n]) for s in sizes)
        if total == 0:
            yield StepResult(skipped=True, update_seconds=time.perf_counter() - t0, steps_in_iteration=steps)
            continue
        n_max = max(len(s[n]) for s in sizes)
        weight = ctx.world_size / (total * k_steps)
        outputs: list[SurrogateOutput] = []
        for pos in range(n_max):
            mb = plan[n][pos] if pos < len(plan[n]) else dummy
            for k in range(k_steps):
                out = _replay(policy, mb, k, cfg)
                scale = 0.0 if mb.dummy else weight
                boundary = pos == n_max - 1 and k == k_steps - 1
                engine.backward(out.loss.sum() * scale, boundary=boundary)
                if not mb.dummy:
                    outputs.append(out)
        grad_norm = engine.step()
        if ema is not None:
            ema.maybe_update(first_step + n + 1)
        diag = _global_summary(outputs, cfg, ctx)
        yield StepResult(
            diag,
            samples=total,
            grad_norm=grad_norm,
            update_seconds=time.perf_counter() - t0,
            steps_in_iteration=steps,
        )


def _global_summary(outputs: list[SurrogateOutput], cfg: RatioConfig, ctx: DistContext) -> dict[str, float]:
    fields_ = ("loss", "policy_loss", "kl", "ratio", "log_ratio", "raw_log_ratio")
    local = {f: torch.cat([getattr(o, f).detach().float().cpu().flatten() for o in outputs]) if outputs else
             torch.zeros(0) for f in fields_}  # fmt: skip
    if ctx.world_size > 1:
        parts = ctx.all_gather_object(local)
        local = {f: torch.cat([p[f] for p in parts]) for f in fields_}
    merged = SurrogateOutput(**local)
    diag = summarize([merged], cfg.clip_range)
    diag["loss"] = float(merged.loss.double().mean())
    return diag
