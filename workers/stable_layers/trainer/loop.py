"""The Flow-GRPO training loop: iterations of collect → update, metrics, checkpoints, resume.

One iteration (method.md §1.1): take `grpo.imagesPerIteration` images, sample `grpo.groupSize`
candidates each and score them (collect.py), compute group advantages over all ranks, then make
`grpo.optimizerStepsPerIteration` optimizer steps on the replayed trajectories (update.py).
After every optimizer step rank 0 appends a record to `metrics.jsonl`, replaces `progress.json`
and calls the callbacks (docs/internals.md "Trainer callbacks").

Checkpoints are taken at the end of the iteration in which the step count crosses a multiple of
`checkpoint.everySteps`, and at the end of the run: an iteration boundary is the only point where
nothing but weights, optimizer, RNG and data position is needed to continue exactly. With
`resume`, the newest COMMITTED checkpoint is loaded (partial uploads are ignored) and the run
continues as if it had never stopped. Without it, an output that already holds committed
checkpoints is refused, so a run is never overwritten by accident.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from stable_layers import storage
from stable_layers.spec import RunSpec, SpecError
from stable_layers.trainer.checkpoint import LoopState, load_training_state, load_weights, save_checkpoint

log = logging.getLogger("stable_layers.trainer.loop")

METRICS_FILE = "metrics.jsonl"
_DIAG_KEYS = (
    "loss", "policy_loss", "kl", "approx_kl", "clipfrac", "clipfrac_gt_one", "clipfrac_lt_one",
    "ratio_mean", "ratio_std", "log_ratio_std", "raw_log_ratio_mean",
)  # fmt: skip


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class MetricsLog:
    """metrics.jsonl: appended locally each step; for a remote store uploaded at checkpoints and
    at the end. On resume, records after the resumed step (a crashed tail) are dropped."""

    def __init__(self, store: storage.Store, local_root: Path | None, resume_step: int | None):
        self.store = store
        self.remote = local_root is None
        self.path = (local_root or Path(tempfile.mkdtemp(prefix="sl-metrics-"))) / METRICS_FILE
        lines: list[str] = []
        if resume_step is not None:
            try:
                text = self.store.get_bytes(METRICS_FILE).decode()
            except storage.NotFoundError:
                text = ""
            lines = [ln for ln in text.splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(ln + "\n" for ln in lines))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def sync(self) -> None:
        if self.remote:
            self.store.put_file(METRICS_FILE, self.path)


def _call(callbacks: Sequence[Any], name: str, *args: Any) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is None:
            continue
        try:
            fn(*args)
        except Exception:  # a metrics/recording hiccup must not end a long run
            log.exception("callback %s.%s failed; training continues", type(cb).__name__, name)


def _record(loop: LoopState, batch: Any, res: Any, n_steps: int, lr: float) -> dict[str, Any]:
    st = batch.stats
    step_seconds = batch.rollout_seconds / n_steps + res.update_seconds
    rec: dict[str, Any] = {
        "step": loop.step,
        "iteration": loop.iteration,
        "epoch": loop.epoch,
        "reward_mean": st.reward_mean,
        "reward_std": st.reward_std,
        "group_std_mean": st.group_std_mean,
        "zero_std_ratio": st.zero_std_ratio,
        "num_groups": st.num_groups,
        "kept_fraction": float(st.keep.float().mean()),
        "samples": res.samples,
        "skipped": res.skipped,
        "grad_norm": None if res.skipped else res.grad_norm,
        "lr": lr,
        "step_seconds": step_seconds,
        "samples_per_second": batch.num_samples / n_steps / step_seconds if step_seconds > 0 else 0.0,
        "rollout_seconds": batch.rollout_seconds,
        "score_wait_seconds": batch.score_wait_seconds,
        "update_seconds": res.update_seconds,
        "time": time.time(),
    }
    rec.update({k: float(res.diagnostics.get(k, 0.0)) for k in _DIAG_KEYS})
    rec.update({f"reward_{k}": v for k, v in batch.criteria_means.items()})
    rec.update({f"scorer_{k}": v for k, v in batch.scorer_stats.items()})
    return rec


class NoLearningSignalError(TrainError):
    """Every optimizer step of the run was skipped: no group ever had a non-zero advantage."""

    reason = "NoLearningSignal"


def _progress(
    spec_max: int, loop: LoopState, rec: dict[str, Any] | None, phase: str, last: Any, msg: str, reason: str = ""
) -> dict[str, Any]:
    rec = rec or {}
    out = {
        "step": loop.step,
        "maxSteps": spec_max,
        "phase": phase,
        "rewardMean": rec.get("reward_mean"),
        "rewardStd": rec.get("reward_std"),
        "groupStdMean": rec.get("group_std_mean"),
        "zeroStdRatio": rec.get("zero_std_ratio"),
        "loss": rec.get("loss"),
        "lastCheckpoint": last,
        "message": msg,
    }
    if reason:
        out["reason"] = reason
    return out


def _progress_bar(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return nullcontext(None)
    from stable_layers.console import step_progress

    bar = step_progress("{task.fields[info]}", label="[bold]train[/]")
    bar.add_task("train", total=total, completed=done, info="")
    return bar


def train(
    spec: RunSpec,
    out: str | Path,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    scorer: Any | None = None,
    overlap_scoring: bool = True,
    show_progress: bool = False,
    on_policy_loaded: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train `spec` writing under `out` (a path, file:// or s3:// URI); returns the last record.

    `scorer` overrides `build_scorer(spec.reward)` (tests use small rewards); `overlap_scoring`
    scores group k on a background thread while group k+1 is sampled.
    """
    from stable_layers.policy import load_policy, resolve_device
    from stable_layers.trainer.checkpoint import seed_everything
    from stable_layers.trainer.collect import ImageStream, ScoringLoop, check_layout, collect
    from stable_layers.trainer.distributed import (
        build_engine,
        check_deepspeed_config,
        deepspeed_config,
        init_distributed,
    )
    from stable_layers.trainer.judge_wait import JudgeWait, scorer_base_url
    from stable_layers.trainer.update import LoraEMA, update_steps

    total_steps = max_steps or spec.grpo.max_steps
    device = resolve_device(spec.model.device)
    ctx = init_distributed(spec, device)
    store = storage.open_store(out)
    local_root = store.root if isinstance(store, storage.LocalStore) else None
    scratch = Path(tempfile.mkdtemp(prefix=f"sl-train-r{ctx.rank}-"))
    scoring: ScoringLoop | None = None
    loop = LoopState()
    last_ckpt: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    try:
        check_layout(spec, ctx.world_size)
        if spec.distributed.engine == "deepspeed":
            check_deepspeed_config(deepspeed_config(spec, ctx.world_size), ctx.world_size)
        latest = ctx.broadcast_object(storage.latest_committed(store) if ctx.is_main else None)
        if latest is not None and not resume:
            raise TrainError(
                f"{store.url()} already holds committed checkpoints (newest step {latest}); "
                "pass --resume to continue that run, or choose another --out"
            )
        ckpt_dir = None
        if resume and latest is not None:
            ckpt_dir = scratch / "resume"
            storage.fetch_checkpoint(store, latest, ckpt_dir)
            last_ckpt = {"step": latest, "uri": store.url(storage.checkpoint_key(latest))}

        # The LoRA init draws from the global generators: seed them so every rank (and every
        # rerun) starts from the same adapter.
        seed_everything(spec.sampler.seed)
        policy = load_policy(spec)
        if on_policy_loaded is not None:
            on_policy_loaded(policy)
        if ckpt_dir is not None:
            load_weights(ckpt_dir, policy)
        engine = build_engine(spec, policy.transformer, policy.lora_params, ctx)
        ema = LoraEMA(policy.lora_params, spec.grpo.ema_decay, spec.grpo.ema_every) if spec.grpo.ema else None
        if ckpt_dir is not None:
            loop = load_training_state(ckpt_dir, engine=engine, ctx=ctx, ema=ema)
            loop.iteration_complete = True
            log.info("resumed from %s at step %d", last_ckpt["uri"] if last_ckpt else "?", loop.step)
        if scorer is None:
            from stable_layers.reward import build_scorer

            scorer = build_scorer(spec.reward)
        scoring = ScoringLoop()

        def waiting(msg: str) -> None:
            if ctx.is_main:
                progress = _progress(total_steps, loop, record, "Running", last_ckpt, msg, "WaitingForJudge")
                storage.write_progress(store, progress)

        judge_wait = JudgeWait(
            spec.reward.openai.unavailable_seconds,
            backoff=spec.reward.openai.backoff,
            base_url=scorer_base_url(scorer),
            on_wait=waiting,
        )
        applied = skipped = 0
        stream = ImageStream(spec, loop.epoch, loop.offset)
        metrics = MetricsLog(store, local_root, loop.step if ckpt_dir is not None else None) if ctx.is_main else None
        ckpt_every = spec.checkpoint.every_steps
        saved_at = loop.step

        def checkpoint() -> None:
            nonlocal last_ckpt, saved_at
            t0 = time.perf_counter()
            step_dir = (local_root / storage.checkpoint_key(loop.step)) if local_root else scratch / f"ckpt-{loop.step}"
            if ctx.is_main and step_dir.exists() and local_root is not None:
                shutil.rmtree(step_dir)  # an uncommitted leftover of a crashed attempt at this step
            ctx.barrier()
            save_checkpoint(step_dir, spec=spec, policy=policy, engine=engine, ctx=ctx, loop=loop, ema=ema)
            if ctx.is_main:
                uri = storage.commit_checkpoint(store, loop.step, step_dir)
                storage.apply_retention(store, spec.checkpoint.keep)
                if local_root is None:
                    shutil.rmtree(step_dir, ignore_errors=True)
                assert metrics is not None
                metrics.sync()
                last_ckpt = {"step": loop.step, "uri": uri}
                _call(callbacks, "on_checkpoint", loop.step, uri, time.perf_counter() - t0)
                storage.write_progress(store, _progress(total_steps, loop, record, "Running", last_ckpt, "checkpoint"))
            saved_at = loop.step
            ctx.barrier()

        if ctx.is_main:
            storage.write_progress(store, _progress(total_steps, loop, None, "Running", last_ckpt, "started"))
        with _progress_bar(show_progress and ctx.is_main, total_steps, loop.step) as bar:
            while loop.step < total_steps:
                images = stream.take(spec.grpo.images_per_iteration)
                batch = collect(
                    spec, policy, scorer, scoring, ctx, images, loop.iteration,
                    overlap=overlap_scoring, judge_wait=judge_wait,
                )  # fmt: skip
                for i, group, score in batch.groups:
                    advs = [batch.advantages[(i, c)] for c in range(len(group.candidates))]
                    _call(callbacks, "on_group", loop.step, group, score, advs)
                results = update_steps(spec, policy, engine, batch, ctx, ema=ema, first_step=loop.step)
                planned = spec.grpo.optimizer_steps_per_iteration
                done = 0
                for res in results:
                    planned = res.steps_in_iteration
                    loop.step += 1
                    done += 1
                    skipped += int(res.skipped)
                    applied += int(not res.skipped)
                    loop.samples += res.samples
                    record = _record(loop, batch, res, planned, spec.grpo.lr)
                    if ctx.is_main:
                        assert metrics is not None
                        metrics.append(record)
                        _call(callbacks, "on_step", record)
                        storage.write_progress(store, _progress(total_steps, loop, record, "Running", last_ckpt, ""))
                        if bar is not None:
                            bar.update(bar.task_ids[0], completed=loop.step,
                                       info=f"reward {record['reward_mean']:.3f} loss {record['loss']:+.2e}")  # fmt: skip
                    if loop.step >= total_steps:
                        break
                results.close()
                loop.iteration += 1
                loop.epoch, loop.offset = stream.epoch, stream.offset
                loop.iteration_complete = done >= planned
                if loop.step // ckpt_every > saved_at // ckpt_every or loop.step >= total_steps:
                    checkpoint()
        if saved_at != loop.step:
            checkpoint()
        if skipped and not applied:
            raise NoLearningSignalError(
                f"all {skipped} optimizer steps of this run were skipped: every group had zero advantage "
                "(identical rewards), so nothing was learned. Check the reward: scorer_requests_error and "
                "scorer_stage1_fallbacks in metrics.jsonl show a failing judge"
            )
        if ctx.is_main:
            assert metrics is not None
            metrics.sync()
            storage.write_progress(store, _progress(total_steps, loop, record, "Succeeded", last_ckpt, "done"))
            _call(callbacks, "on_end", record or {})
        return record or {}
    except BaseException as err:
        if ctx.is_main:
            try:
                reason = getattr(err, "reason", type(err).__name__)
                msg = f"{reason}: {err}"[:500]
                storage.write_progress(store, _progress(total_steps, loop, record, "Failed", last_ckpt, msg, reason))
            except Exception as record_err:  # usually the same unreachable store: one line, not a traceback
                log.error("could not write the Failed progress record: %s", record_err)
        raise
    finally:
        if scoring is not None:
            scoring.close(scorer)
        shutil.rmtree(scratch, ignore_errors=True)
        ctx.close()


__all__ = ["NoLearningSignalError", "SpecError", "TrainError", "train"]
