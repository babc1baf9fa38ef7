"""Progress reporting and the loss-curve plot of `pretrain-tiny`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stable_layers.pretrain.config import Phase


class NullReporter:
    """Reports nothing (tests, library use)."""

    def start(self, name: str, total: int, done: int) -> None: ...
    def advance(self, name: str, record: dict[str, float]) -> None: ...
    def log(self, name: str, step: int, total: int, evals: dict[str, float]) -> None: ...
    def stop(self, name: str) -> None: ...


class RichReporter:
    """A rich progress bar per phase, plus one plain log line per evaluation, so a run logged to a
    file (`nohup … > log`) still shows where it is."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        from stable_layers.console import step_progress

        self.console = console or Console()
        self.progress = step_progress("loss {task.fields[loss]:.4f}", console=self.console)
        self.tasks: dict[str, Any] = {}
        self._ema: dict[str, float] = {}

    def start(self, name: str, total: int, done: int) -> None:
        if not self.tasks:
            self.progress.start()
        self.tasks[name] = self.progress.add_task(name, total=total, completed=done, loss=float("nan"))
        if done:
            self.console.log(f"{name}: resuming at step {done}/{total}")

    def advance(self, name: str, record: dict[str, float]) -> None:
        prev = self._ema.get(name)
        self._ema[name] = record["loss"] if prev is None else 0.95 * prev + 0.05 * record["loss"]
        self.progress.update(self.tasks[name], advance=1, loss=self._ema[name])

    def log(self, name: str, step: int, total: int, evals: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in evals.items() if k != "step")
        self.console.log(
            f"{name} step {step}/{total}: train loss (EMA) {self._ema.get(name, float('nan')):.4f}, {shown}"
        )

    def stop(self, name: str) -> None:
        if all(self.progress.tasks[t].finished for t in self.tasks.values()):
            self.progress.stop()


def _smooth(values: list[float], window: int = 25) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def plot_losses(vae: Phase, transformer: Phase, path: Path) -> Path:
    """Two panels: VAE reconstruction loss + held-out PSNR, transformer flow-matching loss + held-out loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, phase, key, val_key, title in (
        (axes[0], vae, "rec", "val_psnr", "VAE: reconstruction loss (train) / PSNR dB (held-out)"),
        (axes[1], transformer, "loss", "val_loss", "Transformer: flow-matching MSE"),
    ):
        raw = [h[key] for h in phase.history]
        steps = np.arange(1, len(raw) + 1)
        sm = _smooth(raw)
        ax.plot(steps, raw, alpha=0.25, lw=0.8, label="train")
        ax.plot(steps[len(steps) - len(sm) :], sm, lw=1.5, label="train (smoothed)")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        evals = [(e["step"], e[val_key]) for e in phase.evals if val_key in e]
        if evals:
            ex, ey = zip(*evals, strict=True)
            target = ax.twinx() if val_key == "val_psnr" else ax
            target.plot(ex, ey, "o-", color="C3", ms=3, label=f"held-out {val_key}")
            if target is not ax:
                target.set_ylabel("PSNR (dB)")
                target.legend(loc="center right", fontsize=7)
        ax.legend(loc="upper right", fontsize=7)
        ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
