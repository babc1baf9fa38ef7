"""`stable-layers eval`: decompose evaluation designs with the base model and (optionally) the
fine-tuned adapter, score both, write report.json + report.html.

Both models see the same designs with the same seeds (`eval.seed + design index`): the adapter is
loaded once into the policy and switched off (`model.reference_policy`) for the base pass of each
design, so the only difference between the two stacks is the LoRA. Scoring (the LayerD protocol and
the A.7 metrics, pure numpy) runs in worker processes while the model decomposes the next design;
only the gallery's designs are kept in memory, so the whole Crello test split fits in RAM.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from stable_layers.eval import layerd
from stable_layers.eval.metrics import design_metrics
from stable_layers.eval.report import GalleryItem, write_report
from stable_layers.eval.summary import DesignResult, ModelResult, json_safe, summarise
from stable_layers.layers import as_rgba_array
from stable_layers.spec import EvalThresholds, RunSpec, protocol_of

log = logging.getLogger(__name__)

Decomposer = Callable[[np.ndarray, int, int], list[np.ndarray]]
"""(input RGBA image, layers, seed) → predicted layers at the input's size, back to front."""


class EvalDataError(ValueError):
    """An evaluation data argument that cannot be used."""


@dataclass
class EvalDesign:
    id: str
    image: np.ndarray  # H×W×4 uint8, opaque
    gt: list[np.ndarray]


# ---------------------------------------------------------------------------------- data


def load_designs(data: str, spec: RunSpec, limit: int | None) -> tuple[Iterator[EvalDesign], dict[str, Any]]:
    """`crello:PATH` (or `crello:hub`) or `synthetic:heldout` → designs, and a dataset-info dict that
    fills in while the iterator runs (skip counts, text path)."""
    kind, _, arg = data.partition(":")
    ev = spec.eval
    info: dict[str, Any] = {"source": data, "skipped": {}}
    if kind == "synthetic":
        if arg != "heldout":
            raise EvalDataError(f"--data {data}: only synthetic:heldout exists (held-out synthetic designs)")
        from stable_layers.data import make_design, split_seeds

        seeds = split_seeds("heldout", limit or ev.heldout_designs)
        info.update({"kind": "synthetic", "size": ev.heldout_size, "seeds": [seeds[0], seeds[-1]]})

        def gen() -> Iterator[EvalDesign]:
            for s in seeds:
                d = make_design(s, ev.heldout_size)
                yield EvalDesign(d.id, as_rgba_array(d.image), list(d.layers))

        return gen(), info
    if kind == "crello":
        if not arg:
            raise EvalDataError("--data crello:PATH needs a path (save_to_disk folder or Parquet shards) or 'hub'")
        from stable_layers.data import CrelloStats, iter_designs

        stats = CrelloStats()
        cr = ev.crello
        info.update({"kind": "crello", "split": cr.split, "shortSide": cr.short_side, "textPath": stats.text_path})

        def crello() -> Iterator[EvalDesign]:
            kept = 0
            for d in iter_designs(arg, split=cr.split, revision=cr.revision, short_side=cr.short_side, stats=stats):
                if limit is not None and kept >= limit:
                    break
                if len(d.layers) > cr.max_layers:
                    stats.skipped[f"more than {cr.max_layers} layers (eval.crello.maxLayers)"] += 1
                    continue
                kept += 1
                yield EvalDesign(d.id, as_rgba_array(d.image), d.layers)
            info["skipped"] = dict(stats.skipped)
            info["rows"] = stats.rows

        return crello(), info
    raise EvalDataError(f"--data {data}: expected crello:PATH, crello:hub or synthetic:heldout")


# ---------------------------------------------------------------------------------- scoring


def score_design(
    pred: list[np.ndarray], gt: list[np.ndarray], image: np.ndarray, th: EvalThresholds, max_edits: int
) -> ModelResult:
    """LayerD levels (None under LayerD's skip rule: < 2 layers on either side) and A.7 metrics."""
    levels = layerd.evaluate_pair(pred, gt, max_edits) if len(pred) >= 2 and len(gt) >= 2 else None
    return ModelResult(levels, design_metrics(pred, image, th, gt))


class _Inline(Executor):
    """Runs work at submit time (workers = 1, or where processes are unavailable)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as err:
            f.set_exception(err)
        return f


def _executor(workers: int) -> Executor:
    n = workers or os.cpu_count() or 1
    if n <= 1:
        return _Inline()
    # spawn, not fork: the parent holds torch threads and possibly CUDA state.
    return ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn"))


# ---------------------------------------------------------------------------------- models


def _lora_dir(local: Path) -> Path:
    from stable_layers.policy import LORA_WEIGHT_NAME, PEFT_CONFIG_NAME

    for candidate in (local / "lora", local):
        if (candidate / LORA_WEIGHT_NAME).is_file() or (candidate / PEFT_CONFIG_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"{local}: no lora/{LORA_WEIGHT_NAME} and no {PEFT_CONFIG_NAME}; pass a checkpoint written by training "
        "or a PEFT adapter folder"
    )


def resolve_checkpoint(checkpoint: str, scratch: Path) -> Path:
    """A checkpoint URI (`s3://…/checkpoints/step-N`, `file://…`) or a committed local step folder
    is fetched with checksum verification; a plain LoRA folder is used in place."""
    from stable_layers import storage

    local = Path(checkpoint)
    committed = local.is_dir() and (local / storage.COMMITTED).is_file()
    if "://" in checkpoint or committed:
        store, step = storage.split_step_uri(checkpoint)
        target = scratch / f"checkpoint-{step}"
        storage.fetch_checkpoint(store, step, target)
        return _lora_dir(target)
    if not local.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: not a directory or store URI")
    return _lora_dir(local)


def model_decomposers(spec: RunSpec, lora_dir: Path | None) -> dict[str, Decomposer]:
    """Base (adapter off) and, with a LoRA, fine-tuned decomposers sharing one loaded pipeline."""
    from stable_layers.policy import decompose, load_adapter, load_policy, reference_policy

    policy = load_policy(spec, with_lora=False)
    if lora_dir is not None:
        load_adapter(policy, lora_dir, "--checkpoint")  # a diffusers LoRA or a PEFT folder (the release's)
    s = spec.sampler

    def run(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
        return decompose(
            policy,
            [image],
            layers=n_layers,
            steps=s.eval_steps,
            seed=seed,
            resolution=s.resolution,
            cfg_scale=s.cfg_scale,
            cfg_normalize=s.cfg_normalize,
            method=s.eval_sampler,
        )[0]

    def base(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
        with reference_policy(policy):
            return run(image, n_layers, seed)

    def tuned(image: np.ndarray, n_layers: int, seed: int) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            return run(image, n_layers, seed)

    return {"base": base, "finetuned": tuned} if lora_dir is not None else {"base": base}


# ---------------------------------------------------------------------------------- main


def run_evaluation(
    spec: RunSpec,
    data: str,
    out: str | Path,
    checkpoint: str | None = None,
    limit: int | None = None,
    *,
    decomposers: dict[str, Decomposer] | None = None,
) -> dict[str, Any]:
    """Evaluate and write `out/report.json` (last) and `out/report.html`; returns the report dict.

    `decomposers` replaces the model (tests, other decomposers); its keys name the models, the
    first is the baseline.
    """
    ev = spec.eval
    limit = limit if limit is not None else ev.limit
    started = time.monotonic()
    designs, info = load_designs(data, spec, limit)
    with tempfile.TemporaryDirectory(prefix="stable-layers-eval-") as scratch:
        own_model = decomposers is None
        if decomposers is None:
            lora = resolve_checkpoint(checkpoint, Path(scratch)) if checkpoint else None
            decomposers = model_decomposers(spec, lora)
        names = list(decomposers)
        results, gallery, decompose_s = _run(designs, decomposers, spec)
    summary = summarise(results, names, max_edits=ev.max_edits, resamples=ev.bootstrap, seed=ev.seed)
    sampling = sampling_settings(spec)
    protocol, differences = protocol_of(sampling)
    # numbers of decomposers passed in (tests, other methods) were not made by these settings
    protocol_scope = "model" if own_model else "caller-supplied decomposers"
    info["designs"] = len(results)
    if not results:
        raise EvalDataError(f"--data {data}: no design could be evaluated (skipped: {info.get('skipped')})")
    report = json_safe(
        {
            "format": 1,
            "name": spec.name,
            "data": data,
            "checkpoint": checkpoint,
            "model": spec.model.preset or spec.model.base,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": {
                **sampling,
                "maxEdits": ev.max_edits,
                "bootstrap": ev.bootstrap,
                "thresholds": ev.thresholds.model_dump(by_alias=True),
            },
            "protocol": {"name": protocol, "differences": differences, "decomposers": protocol_scope},
            "dataset": info,
            "timing": {"seconds": round(time.monotonic() - started, 3), "decomposeSeconds": round(decompose_s, 3)},
            "summary": summary,
            "designs": [
                {
                    "id": r.id,
                    "gtLayers": r.gt_layers,
                    **{n: {"layerd": m.layerd, "metrics": m.metrics} for n, m in r.models.items()},
                }
                for r in results
            ],
            "notes": [_protocol_note(protocol, differences, protocol_scope), *_notes(info, ev.layers)],
        }
    )
    where = write_report(out, report, gallery)
    log.info("evaluation report written to %s", where)
    return report


def _run(
    designs: Iterator[EvalDesign], decomposers: dict[str, Decomposer], spec: RunSpec
) -> tuple[list[DesignResult], list[GalleryItem], float]:
    ev = spec.eval
    results: list[DesignResult] = []
    gallery: list[GalleryItem] = []
    pending: list[tuple[DesignResult, str, Future[ModelResult]]] = []
    decompose_s = 0.0
    executor = _executor(ev.workers)
    try:
        for index, d in enumerate(designs):
            n_layers = len(d.gt) if ev.layers == "gt" else int(ev.layers)
            res = DesignResult(d.id, len(d.gt))
            item = GalleryItem(d.id, d.image, d.gt) if len(gallery) < ev.gallery else None
            for name, fn in decomposers.items():
                t0 = time.monotonic()
                pred = [np.ascontiguousarray(as_rgba_array(p)) for p in fn(d.image, n_layers, ev.seed + index)]
                decompose_s += time.monotonic() - t0
                _check_sizes(pred, d, name)
                pending.append(
                    (res, name, executor.submit(score_design, pred, d.gt, d.image, ev.thresholds, ev.max_edits))
                )
                if item is not None:
                    item.models[name] = pred
            results.append(res)
            if item is not None:
                gallery.append(item)
            _drain(pending, limit=4 * max(1, ev.workers or os.cpu_count() or 1))
        _drain(pending, limit=0)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    for item in gallery:
        r = next(x for x in results if x.id == item.id)
        for name, m in r.models.items():
            k0 = m.layerd[0] if m.layerd else None
            item.caption[name] = (
                f"LayerD k=0 L1 {k0['rgb_l1']:.3f} IoU {k0['alpha_iou']:.3f}, " if k0 else "LayerD skipped, "
            ) + f"blank {m.metrics['blank_fg']}/{m.metrics['fg_layers']}"
    return results, gallery, decompose_s


def _drain(pending: list[tuple[DesignResult, str, Future[ModelResult]]], limit: int) -> None:
    """Collect finished scores, blocking while more than `limit` are in flight (bounds memory)."""
    while pending and (len(pending) > limit or pending[0][2].done()):
        res, name, fut = pending.pop(0)
        res.models[name] = fut.result()


def _check_sizes(pred: list[np.ndarray], d: EvalDesign, name: str) -> None:
    want = d.gt[0].shape[:2]
    bad = [p.shape[:2] for p in pred if p.shape[:2] != want]
    if not pred or bad:
        raise RuntimeError(f"{name} decomposition of {d.id}: got {len(pred)} layers of sizes {bad or '-'}, need {want}")


def sampling_settings(spec: RunSpec) -> dict[str, Any]:
    """The decomposition settings every model number of the report was produced with."""
    s = spec.sampler
    return {
        "sampler": s.eval_sampler,
        "steps": s.eval_steps,
        "cfgScale": s.cfg_scale,
        "cfgNormalize": s.cfg_normalize if s.cfg_scale > 1 else False,
        "resolution": s.resolution,
        "layers": spec.eval.layers,
        "prompt": spec.model.prompt,
        "seed": spec.eval.seed,
    }


def _protocol_note(name: str, differences: list[str], scope: str) -> str:
    if scope != "model":
        return "Protocol: not applicable — the layers came from caller-supplied decomposers, not the model."
    label = {"release": "the Stable-Layers release protocol", "qil": "the Qwen-Image-Layered README protocol"}
    head = f"Protocol: every number was produced with {label.get(name, 'custom settings (neither published protocol)')}"
    return head + (f", except {'; '.join(differences)}." if differences else ".")


def _notes(info: dict[str, Any], layers: Any) -> list[str]:
    notes = [
        "LayerD protocol: occlusion grouping, DTW, up to k greedy merges on either side (eval.md A.2–A.6).",
        "Layer-quality metrics follow eval.md A.7 proposals; the Stable-Layers paper publishes no definitions.",
        f"Layers requested per design: {layers} ('gt' = the ground-truth layer count L).",
        "Per-layer L1 by L: premultiplied-RGBA mean absolute error, index-aligned, raw (ungrouped) GT layers.",
    ]
    if info.get("kind") == "crello":
        notes.append(
            f"Crello text path: {info.get('textPath')} (text drawn from the pre-rendered element image, "
            "not re-typeset as LayerD/QIL do; numbers differ slightly)."
        )
    if info.get("skipped"):
        notes.append(f"Skipped designs: {info['skipped']}.")
    return notes
