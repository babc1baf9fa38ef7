"""CLI commands, one module per area; each imports its heavy dependencies lazily. `cli.py`
registers them on the `stable-layers` app."""

from stable_layers.commands import evaluate, pretrain, rollouts, score, train

__all__ = ["evaluate", "pretrain", "rollouts", "score", "train"]
