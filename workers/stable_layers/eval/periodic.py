"""In-process evaluation of committed checkpoints during a local `stable-layers train --evaluate`.

On a cluster the operator runs one evaluation Job per checkpoint instead (GPU of its own, no stall of
the trainer's collectives), so the trainer only evaluates when asked to. The callback follows
`eval.everySteps` (0 = only at the end) and `eval.data`; reports go where the operator puts them,
`<run>/eval/step-NNNNNN/report.json|html`.
"""

from __future__ import annotations

import logging
from typing import Any

from stable_layers import storage
from stable_layers.spec import RunSpec, SpecError

log = logging.getLogger("stable_layers.eval")


def _join(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/{key}"


class PeriodicEvaluation:
    """Trainer callback: evaluate the first checkpoint at or after every multiple of
    `eval.everySteps`, and the final checkpoint at the end of the run (once per step)."""

    def __init__(self, spec: RunSpec, out: str):
        if not spec.eval.data:
            raise SpecError("eval.data: --evaluate needs evaluation data, e.g. `synthetic:heldout` or `crello:/path`")
        self.spec = spec
        self.out = out
        self.every = spec.eval.every_steps
        self.next_due = self.every if self.every else None
        self.last_checkpoint: tuple[int, str] | None = None
        self.evaluated: dict[int, str] = {}

    def on_checkpoint(self, step: int, uri: str, upload_seconds: float) -> None:
        self.last_checkpoint = (step, uri)
        if self.next_due is not None and step >= self.next_due:
            self._evaluate(step, uri)
            self.next_due = (step // self.every + 1) * self.every

    def on_end(self, record: dict[str, Any]) -> None:
        if self.last_checkpoint is not None:
            self._evaluate(*self.last_checkpoint)

    def _evaluate(self, step: int, uri: str) -> None:
        if step in self.evaluated:
            return
        from stable_layers.eval.runner import run_evaluation

        target = _join(self.out, f"{storage.EVAL}/{storage.step_name(step)}")
        log.info("evaluating checkpoint step %d on %s -> %s", step, self.spec.eval.data, target)
        run_evaluation(self.spec, str(self.spec.eval.data), target, checkpoint=uri, limit=self.spec.eval.limit)
        self.evaluated[step] = target
