"""Experience collection of one training iteration: sample, decode, score, gather, advantages.

Layout of an iteration (as flow_grpo's `DistributedKRepeatSampler`, method.md §3): the iteration
takes M = `grpo.imagesPerIteration` images from the global image stream and makes M·G candidate
*slots* (image-major). Rank r samples the contiguous slice r·M·G/W … (r+1)·M·G/W, so each group
lives on one rank when W divides M, and is split over neighbouring ranks otherwise. Every rank
reads the same global stream (only the images of its slots are sampled), which keeps the data
position one number for any world size.

Seeds: candidate c of image `id` in iteration i draws its noise from
`derive_seed(sampler.seed, i, id, c)` alone — independent of the rank, the batch and the world
size — and the SDE window start of a (image, iteration) is drawn from `sampler.sdeWindowRange` with
its own derived seed (flow_grpo re-seeds with the process index, so each GPU always drew the same
window; ours moves every call). A resumed run therefore re-draws exactly what it would have.

Scoring overlaps sampling: a group that is complete on this rank is handed to the scorer on a
background event loop as soon as it is decoded, and the next group is sampled meanwhile
(`overlap=False` waits for each group instead, for debugging and A/B timing). A split group is
gathered (its candidates' layers) to the rank holding its first candidate and scored there, after
sampling. Rewards and group keys are then all-gathered so every rank computes the same advantages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stable_layers.layers import as_rgba_array, resize_layer
from stable_layers.reward import Candidate, Group, GroupScore, RewardScorer
from stable_layers.spec import RunSpec, SpecError
from stable_layers.trainer.distributed import DistContext
from stable_layers.trainer.grpo import Advantages, compute_advantages
from stable_layers.trainer.judge_wait import JudgeWait


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings; stable across processes and Python runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def window_start(spec: RunSpec, iteration: int, image_id: str) -> int | None:
    """First step of the SDE window: uniform on lo … hi − size, so the whole window lies in
    `sdeWindowRange` [lo, hi) (flow_grpo's `randint(lo, hi - size)`)."""
    s = spec.sampler
    if s.sde_window_size == 0:
        return None
    lo, hi = s.sde_window_range
    return random.Random(derive_seed(s.seed, iteration, image_id, "window")).randint(lo, hi - s.sde_window_size)


def group_seeds(spec: RunSpec, iteration: int, image_id: str, cands: list[int]) -> tuple[list[int], int]:
    """(noise seed of each candidate in `cands`, seed of the group's shared initial latent).

    The shared latent (`sampler.sameLatent`) is candidate 0's seed whichever rank samples which
    candidates, so a group split across ranks still shares one initial noise."""
    s = spec.sampler
    return [derive_seed(s.seed, iteration, image_id, c) for c in cands], derive_seed(s.seed, iteration, image_id, 0)


def check_layout(spec: RunSpec, world_size: int) -> None:
    slots = spec.grpo.images_per_iteration * spec.grpo.group_size
    if slots % world_size:
        raise SpecError(
            f"grpo.imagesPerIteration x grpo.groupSize = {slots} candidates per iteration cannot be split evenly "
            f"over {world_size} ranks; make it a multiple of the number of processes"
        )


def rank_slots(spec: RunSpec, rank: int, world_size: int) -> list[tuple[int, int]]:
    """(image index in the iteration, candidate) pairs this rank samples."""
    g = spec.grpo
    slots = [(i, c) for i in range(g.images_per_iteration) for c in range(g.group_size)]
    per = len(slots) // world_size
    return slots[rank * per : (rank + 1) * per]


class ImageStream:
    """The global image stream as (epoch, offset); restartable at any position."""

    def __init__(self, spec: RunSpec, epoch: int = 0, offset: int = 0):
        self.spec = spec
        self.epoch, self.offset = epoch, offset
        self._it: Iterator[Any] | None = None

    def _open(self) -> Iterator[Any]:
        from itertools import islice

        from stable_layers.data import iter_images

        it = iter_images(self.spec.data, rank=0, world_size=1, epoch=self.epoch)
        return islice(it, self.offset, None)

    def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        restarts = 0
        while len(out) < n:
            if self._it is None:
                self._it = self._open()
            rec = next(self._it, None)
            if rec is None:
                if self.offset == 0 or restarts > 1:
                    raise SpecError(f"data: the source yielded no readable image in epoch {self.epoch}")
                self.epoch, self.offset, self._it = self.epoch + 1, 0, None
                restarts += 1
                continue
            restarts = 0
            self.offset += 1
            out.append(rec)
        return out


class ScoringLoop:
    """An asyncio loop on a daemon thread; `submit` schedules a coroutine and returns a future."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reward-scoring", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, scorer: RewardScorer | None = None) -> None:
        if scorer is not None and self.thread.is_alive():
            self.submit(scorer.aclose()).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class LocalRollout:
    """One `sample_group` call: this rank's candidates `cands` of image `image_index`."""

    image_index: int
    image_id: str
    cands: list[int]
    rollout: Any  # sampler.Rollout


@dataclass
class IterationBatch:
    """What the update needs from one iteration, on one rank."""

    rollouts: list[LocalRollout]
    advantages: dict[tuple[int, int], float]
    """(image index, candidate) → advantage, for every slot of the iteration."""
    keep: dict[tuple[int, int], bool]
    stats: Advantages
    rank_of: dict[tuple[int, int], int]
    criteria_means: dict[str, float] = field(default_factory=dict)
    scorer_stats: dict[str, float] = field(default_factory=dict)
    groups: list[tuple[int, Group, GroupScore]] = field(default_factory=list)
    """(image index, group, score) of the groups scored on rank 0, for the on_group callbacks."""
    rollout_seconds: float = 0.0
    score_wait_seconds: float = 0.0
    num_samples: int = 0


def _group_image(image: np.ndarray, rollout: Any) -> np.ndarray:
    return resize_layer(as_rgba_array(image), (rollout.width, rollout.height))


def collect(
    spec: RunSpec,
    policy: Any,
    scorer: RewardScorer,
    scoring: ScoringLoop,
    ctx: DistContext,
    images: list[Any],
    iteration: int,
    *,
    overlap: bool = True,
    judge_wait: JudgeWait | None = None,
) -> IterationBatch:
    """Sample this rank's slots of `images`, score every group once, gather, compute advantages.

    With `judge_wait`, a group whose every judge request failed is re-scored until the judge
    answers or the wait's limit ends the run (judge_wait.py); no step is counted meanwhile."""
    from stable_layers.policy import decode, sample_group

    g = spec.grpo
    t0 = time.perf_counter()
    mine = rank_slots(spec, ctx.rank, ctx.world_size)
    by_image: dict[int, list[int]] = {}
    for i, c in mine:
        by_image.setdefault(i, []).append(c)
    rank_of = {slot: r for r in range(ctx.world_size) for slot in rank_slots(spec, r, ctx.world_size)}

    rollouts: list[LocalRollout] = []
    pending: list[tuple[int, Group, concurrent.futures.Future[GroupScore]]] = []
    partial: list[tuple[int, str, list[int], np.ndarray, list[list[np.ndarray]]]] = []
    wait = 0.0
    for i, cands in by_image.items():
        rec = images[i]
        seeds, latent_seed = group_seeds(spec, iteration, rec.id, cands)
        rollout = sample_group(
            policy,
            rec.image,
            group_size=len(cands),
            sampler=spec.sampler,
            seeds=seeds,
            window_start=window_start(spec, iteration, rec.id),
            latent_seed=latent_seed,
            cfg_normalize=spec.sampler.cfg_normalize,
        )
        layers = decode(policy, rollout.final_latents, rollout)
        rollouts.append(LocalRollout(i, rec.id, cands, rollout))
        image = _group_image(rec.image, rollout)
        if len(cands) == g.group_size:
            group = Group(rec.id, image, [Candidate(ls) for ls in layers])
            fut = scoring.submit(scorer.score_group(group))
            if not overlap:
                t = time.perf_counter()
                fut.result()
                wait += time.perf_counter() - t
            pending.append((i, group, fut))
        else:
            partial.append((i, rec.id, cands, image, layers))

    # split groups: the rank holding candidate 0 assembles and scores them
    if ctx.world_size > 1:
        gathered = [p for per_rank in ctx.all_gather_object(partial) for p in per_rank]
        assembled: dict[int, dict[int, list[np.ndarray]]] = {}
        meta: dict[int, tuple[str, np.ndarray]] = {}
        for i, image_id, cands, image, layers in gathered:
            assembled.setdefault(i, {}).update(zip(cands, layers, strict=True))
            meta.setdefault(i, (image_id, image))
        for i, by_cand in sorted(assembled.items()):
            if rank_of[(i, 0)] != ctx.rank:
                continue
            image_id, image = meta[i]
            group = Group(image_id, image, [Candidate(by_cand[c]) for c in range(g.group_size)])
            pending.append((i, group, scoring.submit(scorer.score_group(group))))
    elif partial:
        raise RuntimeError("a group was split on a single rank; this is a bug in rank_slots")

    def resolve(fut: concurrent.futures.Future[GroupScore], group: Group) -> GroupScore:
        if judge_wait is None:
            return fut.result()
        return judge_wait.resolve(fut, group, lambda g: scoring.submit(scorer.score_group(g)))

    t = time.perf_counter()
    scored = [(i, group, resolve(fut, group)) for i, group, fut in pending]
    wait += time.perf_counter() - t

    mine_rewards = []
    for i, group, score in scored:
        if len(score.scores) != len(group.candidates):
            raise RuntimeError(f"scorer returned {len(score.scores)} scores for {len(group.candidates)} candidates")
        mine_rewards.append((i, [s.reward for s in score.scores], [s.criteria for s in score.scores], score.stats))
    all_rewards = [r for per_rank in ctx.all_gather_object(mine_rewards) for r in per_rank]
    all_rewards.sort(key=lambda r: r[0])
    if len(all_rewards) != g.images_per_iteration:
        raise RuntimeError(f"gathered {len(all_rewards)} scored groups, expected {g.images_per_iteration}")

    slots = [(i, c) for i, rewards, _, _ in all_rewards for c in range(len(rewards))]
    rewards = [r for _, rs, _, _ in all_rewards for r in rs]
    keys = [images[i].id + f"#{i}" for i, _ in slots]  # the same image twice in one iteration is two groups
    adv = compute_advantages(rewards, keys, std_mode=g.std_mode, adv_clip_max=g.adv_clip_max)
    criteria: dict[str, list[float]] = {}
    stats: dict[str, list[float]] = {}
    for _, _, crits, st in all_rewards:
        for c in crits:
            for name, v in c.items():
                criteria.setdefault(name, []).append(float(v))
        for name, v in st.items():
            if isinstance(v, int | float):
                stats.setdefault(name, []).append(float(v))
    return IterationBatch(
        rollouts=rollouts,
        advantages={s: float(a) for s, a in zip(slots, adv.values.tolist(), strict=True)},
        keep={s: bool(k) for s, k in zip(slots, adv.keep.tolist(), strict=True)},
        stats=adv,
        rank_of=rank_of,
        criteria_means={k: float(np.mean(v)) for k, v in criteria.items()},
        scorer_stats={k: float(np.mean(v)) for k, v in stats.items()},
        groups=scored if ctx.is_main else [],
        rollout_seconds=time.perf_counter() - t0,
        score_wait_seconds=wait,
        num_samples=len(rewards),
    )
