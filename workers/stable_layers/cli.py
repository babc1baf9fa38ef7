"""`stable-layers`: the command-line entry point (console script in pyproject.toml).

Each command lives in `stable_layers.commands.<area>` and keeps torch/diffusers imports inside the
function body, so `stable-layers --help` stays fast and the operator image can import this module.
"""

from __future__ import annotations

import typer

from stable_layers.commands import decompose, evaluate, pretrain, rollouts, score, train

app = typer.Typer(
    name="stable-layers",
    help="Flow-GRPO fine-tuning of Qwen-Image-Layered with a two-stage VLM reward.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("train")(train.train)
app.command("demo")(train.demo)
app.command("score")(score.score)
app.command("judge-check")(score.judge_check)
app.command("eval")(evaluate.evaluate)
app.command("decompose")(decompose.decompose)
app.command("pretrain-tiny")(pretrain.pretrain_tiny)
app.command("rollouts")(rollouts.rollouts)


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
