"""Sampled rollout records: a training callback writing what the policy produced and how it scored.

For a deterministic sample of groups (`rate`), `on_group` writes under the run's store::

    rollouts/step-NNNNNN/<group>/input.png
    rollouts/step-NNNNNN/<group>/cand-XX/layer-YY.png   every candidate's layers, back to front
    rollouts/step-NNNNNN/<group>/scores.json            rewards, stage scores, criteria, advantages

`scores.json` is written last, so a record with a `scores.json` is complete. Which groups are
recorded is a pure function of (seed, step, image id): a resumed run records the same groups, and
changing `rate` from r1 to r2 > r1 keeps every group r1 recorded. Records are diagnostics, so a
failed write is logged and counted, never raised into the training loop; uploads run on one
background thread so S3 latency does not stall rank 0 (the arrays passed in must not be mutated
afterwards — the trainer hands over fresh decoded arrays).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from stable_layers.layers import as_rgba_array
from stable_layers.storage import ROLLOUTS, Store, step_name

if TYPE_CHECKING:
    from stable_layers.reward import Group, GroupScore
    from stable_layers.spec import RunSpec

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sampled(seed: int, step: int, image_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) draw for one group (sha256 of seed, step, image id)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    digest = hashlib.sha256(f"{seed}:{step}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def group_dir(image_id: str) -> str:
    """A key-safe directory name for an image id (keeps it readable; hashes only when needed)."""
    safe = _UNSAFE.sub("_", image_id).strip("._") or "group"
    if safe != image_id or len(safe) > 80:
        safe = f"{safe[:64]}-{hashlib.sha256(image_id.encode()).hexdigest()[:8]}"
    return safe


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(as_rgba_array(image)).save(buf, format="PNG")
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    return repr(value)


def scores_record(step: int, group: Group, score: GroupScore, advantages: list[float]) -> dict[str, Any]:
    """The `scores.json` body of one group."""
    if len(advantages) != len(score.scores):
        raise ValueError(f"{len(advantages)} advantages for {len(score.scores)} candidates of group {group.image_id!r}")
    candidates = [
        {
            "index": i,
            "reward": s.reward,
            "advantage": float(a),
            "stages": s.stages,
            "criteria": s.criteria,
            "flags": s.flags,
            "raw": s.raw,
        }
        for i, (s, a) in enumerate(zip(score.scores, advantages, strict=True))
    ]
    return _jsonable(
        {
            "step": step,
            "imageId": group.image_id,
            "groupSize": len(group.candidates),
            "layers": len(group.candidates[0].layers) if group.candidates else 0,
            "candidates": candidates,
            "stats": score.stats,
        }
    )


class RolloutRecorder:
    """Trainer callback writing sampled rollout records to `store` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        rate: float = 0.05,
        seed: int = 0,
        *,
        max_per_step: int | None = None,
        background: bool = True,
    ):
        if not 0 <= rate <= 1:
            raise ValueError(f"rollouts.rate must be within [0, 1], got {rate}")
        self.store, self.rate, self.seed, self.max_per_step = store, rate, seed, max_per_step
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts") if background else None
        self._futures: list[Future[None]] = []
        self._per_step: dict[int, int] = {}
        self.written = 0
        self.failed = 0

    def wants(self, step: int, image_id: str) -> bool:
        if self.max_per_step is not None and self._per_step.get(step, 0) >= self.max_per_step:
            return False
        return sampled(self.seed, step, image_id, self.rate)

    def on_group(self, step: int, group: Group, score: GroupScore, advantages: list[float]) -> None:
        if not self.wants(step, group.image_id):
            return
        self._per_step[step] = self._per_step.get(step, 0) + 1
        if self._pool is None:
            self._write(step, group, score, list(advantages))
        else:
            self._futures.append(self._pool.submit(self._write, step, group, score, list(advantages)))
            self._futures = [f for f in self._futures if not f.done()]

    def _write(self, step: int, group: Group, score: GroupScore, advantages: list[float]) -> None:
        base = f"{ROLLOUTS}/{step_name(step)}/{group_dir(group.image_id)}"
        try:
            body = scores_record(step, group, score, advantages)
            self.store.put_bytes(f"{base}/input.png", png_bytes(group.image))
            for c, cand in enumerate(group.candidates):
                for k, layer in enumerate(cand.layers):
                    self.store.put_bytes(f"{base}/cand-{c:02d}/layer-{k:02d}.png", png_bytes(layer))
            self.store.put_bytes(f"{base}/scores.json", json.dumps(body, indent=1).encode())
            self.written += 1
        except Exception as err:  # a diagnostic record must never stop training
            self.failed += 1
            log.warning("rollout record %s/%s not written: %s", self.store.url(base), "scores.json", err)

    def flush(self) -> None:
        """Wait for every queued record."""
        for f in self._futures:
            f.result()
        self._futures = []

    # the other callbacks: nothing to record
    def on_step(self, record: dict[str, Any]) -> None:
        self._per_step = {s: n for s, n in self._per_step.items() if s >= int(record.get("step", 0))}

    def on_checkpoint(self, step: int, uri: str, upload_seconds: float) -> None:
        return None

    def on_end(self, record: dict[str, Any]) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def recorder_from_spec(spec: RunSpec, store: Store) -> RolloutRecorder | None:
    """The recorder configured by `spec.rollouts`, or None when `rate` is 0."""
    r = spec.rollouts
    return RolloutRecorder(store, r.rate, r.seed, max_per_step=r.max_per_step) if r.rate > 0 else None
