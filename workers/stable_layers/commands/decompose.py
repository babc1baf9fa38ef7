"""`stable-layers decompose`: turn images into RGBA layers with the base model or a trained adapter.

Per input image, a folder `OUT/<name>/` with `layer-00.png` … (RGBA, back to front, at the input's
size), `composite.png` (the layers flattened again), `preview.png` (the input beside every layer
on a checkerboard and the composite) and `metadata.json` (every setting, the protocol they make,
the seed, the model and the adapter). The folder is written under a temporary name and renamed
into place, so an interrupted run never leaves a half-written result.

Settings come from `--protocol` (default `release`: the Stable-Layers release's published
settings), each overridable by its own option; the metadata then names what differs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Job:
    path: Path
    name: str  # output folder name, unique within the run
    seed: int


def settings_for(protocol: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The protocol's settings with every option the user gave (not None) put over them."""
    from stable_layers.spec import PROTOCOLS, RELEASE_PROMPT

    base: dict[str, Any] = {"prompt": RELEASE_PROMPT, "seed": 42, **PROTOCOLS[protocol]}
    return {**base, **{k: v for k, v in overrides.items() if v is not None}}


def collect_inputs(inputs: list[Path], seed: int) -> tuple[list[Job], list[str]]:
    """Files as given, folders expanded to their images (sorted, not recursive). Image i of the
    list is seeded `seed + i`, as the release script does. Returns (jobs, problems)."""
    files: list[Path] = []
    problems: list[str] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    jobs, used = [], set()
    for i, f in enumerate(files):
        name, n = f.stem, 2
        while name in used:  # the same stem from two folders (or a.png and a.jpg)
            name, n = f"{f.stem}-{n}", n + 1
        used.add(name)
        jobs.append(Job(f, name, seed + i))
    return jobs, problems


def read_image(path: Path) -> Any:
    """RGBA uint8 array, or raises OSError naming the file."""
    from PIL import Image, UnidentifiedImageError

    from stable_layers.layers import as_rgba_array

    try:
        with Image.open(path) as im:
            im.load()
            return as_rgba_array(im)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise OSError(f"{path}: not a readable image ({err})") from None


def preview_sheet(image: Any, layers: list[Any], composite: Any, height: int = 256) -> Any:
    """Input | layer 0 … layer L−1 | composite, each on a checkerboard, side by side (uint8 RGB)."""
    import numpy as np
    from PIL import Image

    from stable_layers.layers import on_checkerboard

    h, w = image.shape[:2]
    scale = min(1.0, height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gap = 6
    tiles = [image, *layers, composite]
    sheet = np.full((size[1], len(tiles) * (size[0] + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        rgb = np.asarray(on_checkerboard(tile))[..., :3].astype(np.uint8)
        thumb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        x = i * (size[0] + gap)
        sheet[:, x : x + size[0]] = thumb
    return sheet


def write_result(out: Path, job: Job, image: Any, layers: list[Any], metadata: dict[str, Any]) -> Path:
    """Write one image's folder under a temporary name, then rename it into place (an older
    result of the same name is replaced only once the new one is complete)."""
    from stable_layers.layers import composite_rgba, save_image, save_layers

    target = out / job.name
    tmp = out / f".{job.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        files = [p.name for p in save_layers(tmp, layers)]
        comp = composite_rgba(layers)
        save_image(tmp / "composite.png", comp)
        save_image(tmp / "preview.png", preview_sheet(image, layers, comp))
        meta = {**metadata, "files": [*files, "composite.png", "preview.png"]}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():  # the atomic PNG writer creates owner-only files
            f.chmod(0o666 & ~umask)
        if target.exists():
            old = out / f".{job.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _model_fields(model: str, revision: str | None, dtype: str, device: str) -> dict[str, Any]:
    if model in ("tiny", "tiny-random"):
        return {"preset": model, "device": device}
    return {"base": model, "revision": revision, "dtype": dtype, "device": device}


def _fetch_adapter(adapter: str, scratch: Path) -> str:
    """A store URI of a committed checkpoint (s3://…/checkpoints/step-N) → a local copy."""
    if "://" not in adapter:
        return adapter
    from stable_layers import storage

    store, step = storage.split_step_uri(adapter)
    target = scratch / f"checkpoint-{step}"
    storage.fetch_checkpoint(store, step, target)
    return str(target)


def decompose(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Output folder: one sub-folder per image.")],
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="Published settings to start from: release (Stable-Layers: Heun, 50 steps, CFG 1, long side 640, "
            "4 layers, seed 42 + index) or qil (Qwen-Image-Layered README: 50 steps, CFG 4 normalised, 640, 4 layers).",
        ),
    ] = "release",
    model: Annotated[
        str,
        typer.Option("--model", help="tiny, tiny-random, a hub id or a local QwenImageLayeredPipeline folder."),
    ] = "Qwen/Qwen-Image-Layered",
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision of --model.")] = None,
    adapter: Annotated[
        str,
        typer.Option(
            "--adapter",
            help="LoRA to apply: a training checkpoint folder or URI, a PEFT adapter folder, a diffusers LoRA "
            ".safetensors file, a hub id, or none (the base model).",
        ),
    ] = "none",
    layers: Annotated[int | None, typer.Option("--layers", min=1, max=16, help="Layers per image.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=2, max=1000, help="Sampling steps.")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="heun or euler.")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", min=32, max=2048, help="Long side (px).")] = None,
    cfg_scale: Annotated[float | None, typer.Option("--cfg-scale", min=1.0, help="True-CFG scale; 1 = off.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Image i of the inputs uses seed + i.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Fixed conditioning prompt.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images of the same size per forward.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16, float16 or float32 (real models).")] = "bfloat16",
) -> None:
    """Decompose images into RGBA layers (back to front) with the base model or a trained adapter.

    Exit code 0 when every image was decomposed, 1 when some were skipped (each named), 2 when
    nothing could be done (bad options, no readable input, a model or adapter that cannot load)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def fail(msg: str) -> typer.Exit:
        console.print(f"[red]error:[/red] {escape(msg)}")
        return typer.Exit(2)

    from stable_layers.spec import PROTOCOLS, SpecError, parse_run_spec, protocol_of

    if protocol not in PROTOCOLS:
        raise fail(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if sampler is not None and sampler not in ("heun", "euler"):
        raise fail(f"--sampler {sampler!r}: choose heun or euler")
    over = {"sampler": sampler, "steps": steps, "resolution": resolution, "layers": layers, "seed": seed}
    over |= {"cfgScale": cfg_scale, "prompt": prompt}
    settings = settings_for(protocol, over)
    if settings["cfgScale"] <= 1:
        settings["cfgNormalize"] = False
    name, differences = protocol_of(settings, reference=protocol)
    try:
        spec = parse_run_spec(
            {
                "model": {**_model_fields(model, revision, dtype, device), "prompt": settings["prompt"]},
                "sampler": {"cfgScale": settings["cfgScale"], "cfgNormalize": settings["cfgNormalize"]},
            },
            "decompose options",
        )
    except SpecError as err:
        raise fail(str(err)) from None
    jobs, problems = collect_inputs(inputs, settings["seed"])
    for p in problems:
        console.print(f"[yellow]skipped[/yellow] {escape(p)}")
    if not jobs:
        raise fail("no input image to decompose")

    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # loading bars would interleave with ours
    transformers_logging.disable_progress_bar()
    from stable_layers.policy import PolicyLoadError, load_adapter, load_policy, transformer_calls
    from stable_layers.policy import decompose as run
    from stable_layers.storage import StorageError

    with tempfile.TemporaryDirectory(prefix="stable-layers-decompose-") as scratch:
        try:
            policy = load_policy(spec, with_lora=False)
            if adapter.lower() != "none":
                load_adapter(policy, _fetch_adapter(adapter, Path(scratch)), "--adapter")
        except (PolicyLoadError, StorageError, FileNotFoundError) as err:
            raise fail(str(err)) from None
    label = name + (f" ({protocol} with {'; '.join(differences)})" if differences else "")
    console.print(
        f"{len(jobs)} image(s) · {settings['sampler']} {settings['steps']} steps "
        f"({transformer_calls(settings['steps'], settings['sampler'], settings['cfgScale'])} transformer calls), "
        f"CFG {settings['cfgScale']:g}, long side {settings['resolution']}, {settings['layers']} layers · "
        f"protocol {label} · adapter {adapter}",
        markup=False,
    )
    meta_common = {
        "format": 1,
        "settings": settings,
        "protocol": {"name": name, "differences": differences},
        "model": model if revision is None else f"{model}@{revision}",
        "adapter": adapter,
        "layerOrder": "back to front: layer-00 is the background",
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(f"--out {out}: cannot create the output folder ({err})") from None
    skipped = _run_jobs(jobs, out, policy, run, settings, batch_size, meta_common, console, torch)
    done = len(jobs) - len(skipped)
    console.print(
        f"decomposed {done} of {len(jobs)} image(s) into {out}" + (f"; skipped {len(skipped)}" if skipped else ""),
        markup=False,
    )
    if skipped or problems:
        raise typer.Exit(1 if done else 2)


def _run_jobs(
    jobs: list[Job], out: Path, policy: Any, run: Any, settings: dict[str, Any], batch_size: int,
    meta_common: dict[str, Any], console: Any, torch: Any,
) -> list[str]:  # fmt: skip
    """Decompose the jobs in batches, writing each result as it is done; returns the skipped ones."""
    from rich.markup import escape

    from stable_layers.console import step_progress

    skipped: list[str] = []
    tty = sys.stderr.isatty()
    bar = step_progress("{task.fields[info]}", label="[bold]decompose[/]", console=console) if tty else None
    task = bar.add_task("decompose", total=len(jobs), info="") if bar else None
    done = 0
    with bar if bar is not None else nullcontext():
        for start in range(0, len(jobs), batch_size):
            batch, images = [], []
            for job in jobs[start : start + batch_size]:
                try:
                    images.append(read_image(job.path))
                    batch.append(job)
                except OSError as err:
                    skipped.append(str(job.path))
                    console.print(f"[yellow]skipped[/yellow] {escape(str(err))}")
            if batch:
                with torch.no_grad():
                    results = run(
                        policy, images, layers=settings["layers"], steps=settings["steps"], seed=0,
                        resolution=settings["resolution"], cfg_scale=settings["cfgScale"],
                        cfg_normalize=settings["cfgNormalize"], method=settings["sampler"],
                        batch_size=batch_size, seeds=[j.seed for j in batch],
                    )  # fmt: skip
                for job, image, layers in zip(batch, images, results, strict=True):
                    meta = {**meta_common, "input": str(job.path), "seed": job.seed, "size": list(image.shape[1::-1])}
                    target = write_result(out, job, image, layers, meta)
                    if not tty:
                        console.print(f"[{done + 1}/{len(jobs)}] {job.path.name} → {target}", markup=False)
                    done += 1
            if bar is not None:
                bar.update(
                    task, completed=start + len(jobs[start : start + batch_size]), info=f"skipped {len(skipped)}"
                )
    return skipped
