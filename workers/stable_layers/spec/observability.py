"""Spec sections of observability: the Prometheus exporter and rollout records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stable_layers.spec.base import Strict

Tracker = Literal["tensorboard", "wandb"]


class MetricsSpec(Strict):
    """Prometheus exporter of the trainer (rank 0), see docs/metrics.md."""

    port: int | None = Field(None, ge=0, le=65535)
    """Port of the `/metrics` endpoint; `--metrics-port` overrides it; none = no exporter (local
    runs). The operator sets 9400. Default none [OURS]."""
    addr: str = "0.0.0.0"
    """Bind address of the endpoint. Default all interfaces (Prometheus scrapes the pod IP)."""
    linger_seconds: float = Field(30.0, ge=0, le=3600)
    """Keep serving `/metrics` this long after the run ends, so the final step's values are scraped
    before the pod exits (Prometheus scrapes every 15–60 s). Default 30 [OURS]."""
    group_std_buckets: list[float] = Field(
        default_factory=lambda: [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5], min_length=1
    )
    """Upper bounds of the `stable_layers_group_reward_std` histogram buckets (rewards lie in about
    [0, 1], so the within-group std is at most 0.5). The first bucket (0.001) isolates groups with
    no usable spread. Default [OURS]."""
    report_to: list[Tracker] = Field(default_factory=list)
    """Experiment trackers fed on rank 0 besides Prometheus, named as accelerate's and HF Trainer's
    `report_to`: `tensorboard` (event files under `<run>/tensorboard/`) and/or `wandb` (an offline
    run under `<run>/wandb/`; sync it later with `wandb sync`). Each needs its optional extra
    (`pip install 'stable-layers-operator[tensorboard]'` / `[wandb]`). Every numeric metrics.jsonl
    value is logged per step. Default none."""
    images_every_steps: int = Field(50, ge=0)
    """Every this many optimizer steps the trackers also get one group's candidates as images, the
    rewards and advantages in the caption. 0 = scalars only. Default 50 [OURS]."""
    wandb_project: str = Field("stable-layers", min_length=1)
    """wandb project of the offline run (the run's name is the spec's `name`). Default
    `stable-layers`."""


class RolloutsSpec(Strict):
    """Sampled rollout records written to `rollouts/step-NNNNNN/<group>/` (docs/storage.md)."""

    rate: float = Field(0.05, ge=0, le=1)
    """Fraction of groups recorded (input, every candidate's layers, scores, advantages). Which
    groups is a deterministic function of (seed, step, image id), so a resumed run records the
    same ones. 0 disables. Default 0.05 [OURS: one group in 20 keeps S3 traffic small]."""
    seed: int = 0
    """Seed of the sampling decision. Default 0."""
    max_per_step: int | None = Field(None, ge=1)
    """Record at most this many groups per step. Default: no limit."""
