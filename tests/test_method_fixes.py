"""Three method bugs found by a review against flow_grpo, each pinned by a behavioural test."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from stable_layers.spec import RunSpec, SpecError, parse_run_spec
from stable_layers.trainer import collect as C
from stable_layers.trainer.distributed import DistContext
from stable_layers.trainer.update import LoraEMA


def _spec(**sampler: object) -> RunSpec:
    body: dict[str, Any] = {"model": {"preset": "tiny-random"}, "lora": {"rank": 4, "alpha": 8}}
    body["sampler"] = {"resolution": 32, "layers": 2, **sampler}
    return RunSpec.model_validate(body)


# ------------------------------------------------------------------------------------------ EMA


def test_ema_warmup_counts_optimizer_steps_not_updates() -> None:
    p = torch.zeros(1)
    ema = LoraEMA([p], decay=0.9, every=8)
    for step in range(1, 40):  # updates at 8, 16, 24, 32 with the weight at 0
        ema.maybe_update(step)
    p.fill_(1.0)
    ema.maybe_update(40)  # the fifth update, at optimizer step 40
    # flow_grpo: decay min((1+40)/(10+40), 0.9) = 0.82, so the average moves 0.18 toward 1
    assert float(ema.shadow[0]) == pytest.approx(0.18)
    assert ema.current_decay(40) == pytest.approx(0.82)
    assert ema.updates == 5


def test_ema_every_step_reaches_the_configured_decay() -> None:
    ema = LoraEMA([torch.zeros(1)], decay=0.9, every=1)
    assert ema.current_decay(1) == pytest.approx(2 / 11)
    assert ema.current_decay(1000) == pytest.approx(0.9)


# ------------------------------------------------------------------------------------ SDE window


def test_window_draw_keeps_the_whole_window_inside_the_range() -> None:
    spec = _spec(trainSteps=10, sdeWindowSize=2, sdeWindowRange=[0, 5])
    starts = {C.window_start(spec, it, f"img-{i}") for it in range(20) for i in range(20)}
    # flow_grpo draws randint(lo, hi - size): windows (0,1) … (3,4); never step 5
    assert starts == {0, 1, 2, 3}


def test_window_of_the_full_range_has_one_start() -> None:
    spec = _spec(trainSteps=4, sdeWindowSize=2, sdeWindowRange=[1, 3])
    assert {C.window_start(spec, it, "x") for it in range(30)} == {1}


def test_window_larger_than_its_range_is_refused() -> None:
    with pytest.raises(SpecError, match="sdeWindowSize 3 does not fit in sdeWindowRange"):
        parse_run_spec({"sampler": {"trainSteps": 10, "sdeWindowSize": 3, "sdeWindowRange": [0, 2]}})


# ---------------------------------------------------------------------------- sameLatent, split


class _Stop(Exception):
    pass


def _initial_latents_on_rank(rank: int, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """Run `collect` as rank `rank` of 2 on one group of 4 and return the initial noise of the
    candidates it samples (the window starts at step 0, so `latents[:, 0]` is that noise)."""
    import stable_layers.policy as P

    spec = _spec(trainSteps=2, sdeWindowSize=1, sdeWindowRange=[0, 1], sameLatent=True, noiseLevel=0.5, resolution=32)
    spec = spec.model_copy(update={"grpo": spec.grpo.model_copy(update={"group_size": 4, "images_per_iteration": 1})})
    policy = P.load_policy(spec, with_lora=False)
    from stable_layers.policy.sampler import sample_group as real

    seen: list[torch.Tensor] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(real(*args, **kwargs).latents[:, 0].clone())
        raise _Stop

    monkeypatch.setattr(P, "sample_group", spy)
    img = np.full((32, 32, 4), 200, np.uint8)
    ctx = DistContext(rank=rank, world_size=2)
    with pytest.raises(_Stop):
        C.collect(spec, policy, None, None, ctx, [SimpleNamespace(id="d0", image=img)], 0)  # type: ignore[arg-type]
    return seen[0]


def test_same_latent_group_split_across_ranks_shares_candidate_0_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _initial_latents_on_rank(0, monkeypatch)  # candidates 0, 1
    second = _initial_latents_on_rank(1, monkeypatch)  # candidates 2, 3
    assert first.shape[0] == second.shape[0] == 2
    assert torch.equal(first[0], first[1])
    assert torch.equal(second[0], first[0]), "rank 1 must start its candidates from candidate 0's noise"


def test_group_seeds_do_not_depend_on_the_split() -> None:
    spec = _spec()
    whole, shared = C.group_seeds(spec, 3, "img", [0, 1, 2, 3])
    tail, shared_tail = C.group_seeds(spec, 3, "img", [2, 3])
    assert tail == whole[2:]
    assert shared == shared_tail == whole[0]
