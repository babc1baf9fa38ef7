"""`stable-layers pretrain-tiny` (tiny trained model issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def pretrain_tiny(
    out: Annotated[
        Path, typer.Option("--out", help="Pipeline directory to write (e.g. workers/stable_layers/assets/tiny).")
    ],
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, data order and noise.")] = 0,
    vae_steps: Annotated[
        int | None, typer.Option("--vae-steps", min=1, help="VAE optimizer steps (default 2400).")
    ] = None,
    dit_steps: Annotated[
        int | None, typer.Option("--dit-steps", min=1, help="Transformer optimizer steps (default 3600).")
    ] = None,
    designs: Annotated[
        int | None, typer.Option("--designs", min=16, help="Training designs for the transformer (default 2000).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in <out>.work.")] = False,
    card: Annotated[
        bool, typer.Option("--card/--no-card", help="Evaluate on held-out designs and write MODEL_CARD.md.")
    ] = True,
    card_only: Annotated[
        bool, typer.Option("--card-only", help="Only (re)compute the held-out numbers and card of an existing --out.")
    ] = False,
    card_designs: Annotated[int, typer.Option("--card-designs", min=2, help="Held-out designs for the card.")] = 64,
    keep_work: Annotated[
        bool, typer.Option("--keep-work", help="Keep <out>.work (checkpoints, latents) afterwards.")
    ] = False,
    threads: Annotated[
        int,
        typer.Option("--threads", min=1, help="torch intra-op threads (results are deterministic per thread count)."),
    ] = 2,
) -> None:
    """Train the tiny layer-decomposition model from scratch on CPU (VAE, then transformer) and
    save it as a QwenImageLayeredPipeline directory with a model card."""
    import dataclasses

    import torch
    from rich.console import Console

    from stable_layers.pretrain import PretrainConfig, PretrainError, RichReporter
    from stable_layers.pretrain import pretrain_tiny as run

    console = Console()
    torch.set_num_threads(threads)
    if card_only:
        if not (out / "model_index.json").is_file():
            console.print(f"[red]error:[/red] --out {out}: no model_index.json; train first (without --card-only)")
            raise typer.Exit(2)
        _card(out, card_designs)
        return
    overrides = {"vae_steps": vae_steps, "dit_steps": dit_steps, "dit_designs": designs}
    try:
        cfg = dataclasses.replace(PretrainConfig(seed=seed), **{k: v for k, v in overrides.items() if v is not None})
        summary = run(out, cfg, resume=resume, reporter=RichReporter(console), keep_work=keep_work)
    except (PretrainError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(
        f"wrote {out}: VAE {summary['vae']['steps']} steps ({summary['vae']['seconds']} s), transformer "
        f"{summary['transformer']['steps']} steps ({summary['transformer']['seconds']} s), final losses "
        f"{summary['vae']['final_loss']} / {summary['transformer']['final_loss']}"
    )
    if card:
        _card(out, card_designs)


def _card(out: Path, card_designs: int) -> None:
    from rich.console import Console

    from stable_layers.pretrain import CardSettings, write_card

    console = Console()
    summary = write_card(out, CardSettings(designs=card_designs))
    for name, v in summary["methods"].items():
        console.print(
            f"{name:>15}: LayerD k=0 RGB L1 {v['rgb_l1_k0']:.4f}, alpha IoU {v['alpha_iou_k0']:.4f}, "
            f"recomposition PSNR {v['recon_psnr']:.2f} dB, blank-layer rate {v['blank_layer_rate']:.3f}"
        )
    console.print(f"wrote {out / 'MODEL_CARD.md'}")
