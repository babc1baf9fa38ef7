"""Cost of one `pretrain-tiny` transformer step with the compact tokenizer vs the byte-level one.

Measured side by side in one process, single-threaded, on the default PretrainConfig model:
    .venv/bin/python benchmarks/tiny_pretrain.py
Prints the prompt length each tokenizer gives and the median seconds per batch-16 training step
(L = 4 layers, 64 px), and their ratio.
"""

from __future__ import annotations

import statistics
import time

import torch


def main(repeats: int = 7) -> None:
    from diffusers import QwenImageLayeredPipeline

    from stable_layers.policy import tiny
    from stable_layers.pretrain.config import PretrainConfig
    from stable_layers.pretrain.dit import flow_matching_loss
    from stable_layers.pretrain.run import build_components

    torch.set_num_threads(1)
    cfg = PretrainConfig()
    comps = build_components(cfg)
    compact = QwenImageLayeredPipeline(processor=None, **comps)
    byte_tok = tiny.build_tokenizer()
    plain = QwenImageLayeredPipeline(
        processor=None,
        **{**comps, "tokenizer": byte_tok, "text_encoder": tiny.build_text_encoder(byte_tok, hidden_size=cfg.text_dim)},
    )
    tr = comps["transformer"].train()
    opt = torch.optim.AdamW(tr.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(cfg.dit_batch, 5, 16, 8, 8, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sigmas = torch.rand(cfg.dit_batch, generator=gen)
    results = {}
    for name, pipe in (("byte-level", plain), ("compact", compact)):
        with torch.no_grad():
            embeds, mask = pipe.encode_prompt(prompt=[cfg.prompt], device=torch.device("cpu"))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            loss = flow_matching_loss(tr, x0, sigmas, noise, embeds, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        results[name] = (embeds.shape[1], statistics.median(times))
        print(f"{name:>10}: prompt tokens {embeds.shape[1]:4d}, {results[name][1]:.3f} s per step")
    print(f"speed-up compact vs byte-level: {results['byte-level'][1] / results['compact'][1]:.2f}x")


if __name__ == "__main__":
    main()
