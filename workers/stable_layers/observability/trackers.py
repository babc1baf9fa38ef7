"""Experiment trackers as training callbacks: TensorBoard event files and an offline wandb run.

`metrics.reportTo: [tensorboard, wandb]` (names as accelerate's and HF Trainer's `report_to`)
installs them on rank 0 (docs/metrics.md). Both log every numeric value of the metrics.jsonl step
record at its `step`, and every `metrics.imagesEverySteps` steps one group's candidates as images
(input and layers side by side on a checkerboard) with reward and advantage in the caption.

Images ride with the step record that holds their rewards: the group sampled after `s` optimizer
steps (`rollouts/step-s/`) is scored in the record of step `s + 1`, so that is where its images go.

Files: a local run writes into `<run>/tensorboard/` and `<run>/wandb/`; an S3 run writes into a
scratch directory and uploads it to the same keys at every checkpoint and at the end (event files
are append-only, so an upload is a consistent prefix). wandb always runs offline: nothing leaves
the machine until the user runs `wandb sync`. The trackers' packages are optional extras, imported
only when a tracker is built.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from stable_layers.layers import as_rgba_array, on_checkerboard
from stable_layers.storage import LocalStore, Store

if TYPE_CHECKING:
    from stable_layers.reward import Group, GroupScore
    from stable_layers.spec import RunSpec

log = logging.getLogger(__name__)
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
TILE = 192
"""Longest side of one tile (input or layer) in a tracker image, pixels."""
_NOT_SCALARS = ("step", "time")
"""`step` is the x axis; `time` is the wall clock, which both trackers record themselves."""


class TrackerMissingError(RuntimeError):
    """`metrics.reportTo` names a tracker whose package is not installed."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite values of one metrics.jsonl record (booleans and None left out)."""
    out = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def _tile(image: np.ndarray) -> np.ndarray:
    rgba = as_rgba_array(image)
    rgb = on_checkerboard(rgba, cell=max(4, max(rgba.shape[:2]) // 32))[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(rgb))
    pil.thumbnail((TILE, TILE), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def candidate_strip(image: np.ndarray, layers: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """HxWx3 uint8: the input, then each layer (back to front), on a checkerboard, left to right."""
    tiles = [_tile(image), *(_tile(layer) for layer in layers)]
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        out[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


def caption(index: int, score: Any, advantage: float) -> str:
    """One candidate's caption: reward, advantage, the stage scalars and what went wrong."""
    parts = [f"candidate {index}", f"reward {score.reward:.4f}", f"advantage {advantage:+.3f}"]
    parts += [f"stage {k} {v:.4f}" for k, v in sorted(score.stages.items())]
    parts += [name.replace("_", " ") for name, on in sorted(score.flags.items()) if on]
    return ", ".join(parts)


class _Tracker:
    """Shared plumbing: picks the image group, keeps the files, uploads them for remote runs."""

    subdir = ""

    def __init__(self, store: Store, images_every: int = 50, local_dir: Path | None = None):
        self.store, self.images_every = store, images_every
        self._scratch: Path | None = None
        if local_dir is not None:
            self.dir = local_dir
        elif isinstance(store, LocalStore):
            self.dir = store.root / self.subdir
        else:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"sl-{self.subdir}-"))
            self.dir = self._scratch / self.subdir
        self._pending: tuple[int, Group, GroupScore, list[float]] | None = None
        self._imaged: set[int] = set()
        self._uploaded: dict[str, tuple[int, int]] = {}

    def wants_images(self, step: int) -> bool:
        return self.images_every > 0 and step % self.images_every == 0 and step not in self._imaged

    def on_group(self, step: int, group: Group, score: GroupScore, advantages: list[float]) -> None:
        if self._pending is None and self.wants_images(step) and group.candidates:
            self._imaged.add(step)
            self._pending = (step, group, score, list(advantages))

    def on_step(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        self._log_scalars(step, scalars(record))
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._log_images(step, *pending)

    def on_checkpoint(self, step: int, uri: str, upload_seconds: float) -> None:
        self._flush()
        self.sync()

    def on_end(self, record: dict[str, Any]) -> None:
        self.close()

    def sync(self) -> None:
        """Upload new or grown files of a remote run (nothing to do for a local one)."""
        if self._scratch is None or not self.dir.exists():
            return
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(self._scratch).as_posix()
            st = path.stat()
            if self._uploaded.get(rel) == (st.st_size, st.st_mtime_ns):
                continue
            try:
                self.store.put_file(rel, path)
                self._uploaded[rel] = (st.st_size, st.st_mtime_ns)
            except Exception as err:  # diagnostics must not stop training; the next sync retries
                log.warning("%s: %s not uploaded: %s", type(self).__name__, self.store.url(rel), err)

    def close(self) -> None:
        self._finish()
        self.sync()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # the tracker-specific part
    def _log_scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def _log_images(self, step: int, rollout_step: int, group: Group, score: GroupScore, advs: list[float]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        return None

    def _finish(self) -> None:
        return None


class TensorBoardTracker(_Tracker):
    """Event files written by torch's `SummaryWriter` (the writer accelerate uses), under
    `tensorboard/`: scalars under their metrics.jsonl names, candidate images as
    `rollout/candidate-XX` and their captions as the text `rollout/captions`.

    The writer is opened at the first logged step with `purge_step` = that step, so after a resume
    TensorBoard drops what the crashed attempt had logged past the checkpoint (metrics.jsonl is cut
    back the same way)."""

    subdir = TENSORBOARD_DIR

    def __init__(self, store: Store, images_every: int = 50, local_dir: Path | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TrackerMissingError(
                "metrics.reportTo lists tensorboard but it is not installed; "
                "pip install 'stable-layers-operator[tensorboard]' or remove it from metrics.reportTo"
            ) from err
        super().__init__(store, images_every, local_dir)
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def _open(self, step: int) -> Any:
        if self.writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = self._writer_class(log_dir=str(self.dir), purge_step=step)
        return self.writer

    def _log_scalars(self, step: int, values: dict[str, float]) -> None:
        writer = self._open(step)
        for key, value in values.items():
            writer.add_scalar(key, value, step)

    def _log_images(self, step: int, rollout_step: int, group: Group, score: GroupScore, advs: list[float]) -> None:
        writer = self._open(step)
        lines = [f"group `{group.image_id}` sampled after {rollout_step} steps (rollouts/step-{rollout_step:06d})", ""]
        for i, (cand, s, a) in enumerate(zip(group.candidates, score.scores, advs, strict=True)):
            writer.add_image(
                f"rollout/candidate-{i:02d}", candidate_strip(group.image, cand.layers), step, dataformats="HWC"
            )
            lines.append(f"- {caption(i, s, a)}")
        writer.add_text("rollout/captions", "\n".join(lines), step)

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(_Tracker):
    """An offline wandb run under `wandb/` (project `metrics.wandbProject`, run name = spec name):
    the scalars in its history at `step`, the candidates as `rollout` images with captions."""

    subdir = WANDB_DIR

    def __init__(
        self,
        store: Store,
        run_name: str,
        project: str = "stable-layers",
        images_every: int = 50,
        local_dir: Path | None = None,
        config: dict[str, Any] | None = None,
    ):
        try:
            import wandb
        except ImportError as err:
            raise TrackerMissingError(
                "metrics.reportTo lists wandb but it is not installed; "
                "pip install 'stable-layers-operator[wandb]' or remove it from metrics.reportTo"
            ) from err
        super().__init__(store, images_every, local_dir)
        self._wandb = wandb
        self._init = {"project": project, "name": run_name, "config": config}
        self.run: Any = None

    def _open(self) -> Any:
        """The run, started at the first logged step (a trainer that fails before it leaves none)."""
        if self.run is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            wandb = self._wandb
            # offline always: a trainer pod has no business talking to wandb.ai, and the run
            # directory is what `wandb sync` uploads later from wherever the user has credentials
            self.run = wandb.init(
                mode="offline",
                dir=str(self.dir.parent),
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True),
                **self._init,
            )
        return self.run

    def _log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._open().log(values, step=step)

    def _log_images(self, step: int, rollout_step: int, group: Group, score: GroupScore, advs: list[float]) -> None:
        images = [
            self._wandb.Image(candidate_strip(group.image, cand.layers), caption=caption(i, s, a))
            for i, (cand, s, a) in enumerate(zip(group.candidates, score.scores, advs, strict=True))
        ]
        self._open().log({"rollout": images}, step=step)

    def _finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def trackers_from_spec(spec: RunSpec, store: Store) -> list[_Tracker]:
    """The trackers `spec.metrics.reportTo` asks for (rank 0 only: the caller checks the rank)."""
    m = spec.metrics
    out: list[_Tracker] = []
    for name in dict.fromkeys(m.report_to):
        if name == "tensorboard":
            out.append(TensorBoardTracker(store, m.images_every_steps))
        elif name == "wandb":
            config = spec.model_dump(mode="json", by_alias=True)
            out.append(WandbTracker(store, spec.name, m.wandb_project, m.images_every_steps, config=config))
    return out
