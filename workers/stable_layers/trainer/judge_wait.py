"""A dead judge must not look like success: wait for it, then fail the run.

The reward's failure policy gives a candidate whose judge request failed the group mean, so one
bad request costs one sample's advantage. When *every* request of a group failed in transport
(connection refused, timeouts, HTTP 5xx after the backend's own retries) the judge is down, not
flaky: scoring on would give every group zero advantage, skip every step and end "Succeeded"
having burnt the run's GPU hours for nothing. So the trainer holds the iteration: it re-scores the
group with exponential backoff (the progress message says it is waiting), counts no step, and once
the judge has been unavailable for `reward.openai.unavailableSeconds` in a row it ends the run with
`JudgeUnavailableError` (reason `JudgeUnavailable`). Any usable answer resets the clock.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from stable_layers.reward import Group, GroupScore, RewardScorer

log = logging.getLogger("stable_layers.trainer.judge_wait")

MAX_DELAY = 60.0


class JudgeUnavailableError(RuntimeError):
    """The judge stayed unreachable or failing past `reward.openai.unavailableSeconds`."""

    reason = "JudgeUnavailable"


def judge_down(score: GroupScore) -> bool:
    """Every judge request of the group failed in transport (none answered at all)."""
    requests = score.stats.get("requests", 0.0)
    return requests > 0 and score.stats.get("requests_error", 0.0) >= requests


def _last_error(score: GroupScore) -> str:
    for s in score.scores:
        for text in s.raw.get("stage1_answers", []):
            if text.startswith("<error:"):
                return text.removeprefix("<error: ").removesuffix(">")
    return "no answer"


class JudgeWait:
    """Turns "the whole group failed" into waiting (with backoff) and, past the limit, an error.

    `resolve` is called with each scored group's future, in order; `on_wait(message)` reports
    the wait (the loop writes it to progress.json). `clock` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        limit_seconds: float,
        *,
        backoff: float = 1.0,
        base_url: str = "",
        on_wait: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = float(limit_seconds)
        self.backoff = max(float(backoff), 0.1)
        self.base_url = base_url
        self.on_wait = on_wait or (lambda msg: None)
        self.clock = clock
        self.sleep = sleep
        self.down_since: float | None = None
        self.waits = 0
        self.waited_seconds = 0.0

    def resolve(
        self,
        fut: concurrent.futures.Future[GroupScore],
        group: Group,
        rescore: Callable[[Group], concurrent.futures.Future[GroupScore]],
    ) -> GroupScore:
        score = fut.result()
        attempt = 0
        while judge_down(score):
            now = self.clock()
            if self.down_since is None:
                self.down_since = now
            down = now - self.down_since
            if down >= self.limit:
                raise JudgeUnavailableError(
                    f"the judge at {self.base_url or '?'} has been unreachable or failing for {down:.0f} s "
                    f"(limit reward.openai.unavailableSeconds = {self.limit:.0f}); last error: {_last_error(score)}. "
                    "Check the judge Deployment (GET /health) and resume the run once it serves again"
                )
            delay = min(self.backoff * 2**attempt, MAX_DELAY, max(self.limit - down, 0.0))
            msg = (
                f"waiting for the judge: every request of group {group.image_id!r} failed "
                f"({_last_error(score)}); unavailable for {down:.0f} s of {self.limit:.0f} s, retrying in {delay:.0f} s"
            )
            log.warning(msg)
            self.on_wait(msg)
            self.sleep(delay)
            self.waits += 1
            self.waited_seconds += delay
            attempt += 1
            score = rescore(group).result()
        self.down_since = None
        return score


def scorer_base_url(scorer: RewardScorer) -> str:
    backend: Any = getattr(scorer, "backend", None)
    spec = getattr(backend, "spec", None)
    return str(getattr(spec, "base_url", ""))
