"""CLI commands, one module per area; each imports its heavy dependencies lazily. `cli.py`
registers them on the `stable-layers` app."""

from stable_layers.commands import decompose, evaluate, pretrain, rollouts, score, train

__all__ = ["decompose", "evaluate", "pretrain", "rollouts", "score", "train"]
