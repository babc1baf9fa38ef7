"""GPU check at the real Qwen-Image-Layered transformer dimensions (random bf16 weights).

Builds `QwenImageTransformer2DModel` with the real config (model.md §5: 60 blocks, 24 heads × 128,
joint dim 3584, layer-3D RoPE; ~20.4B parameters) on the GPU with random weights, wraps it in a
`Policy` with tiny same-geometry VAE (real 8x factor, so latent shapes are real) and a random
prompt embedding, and times with the project's own sampler:

  1. a 10-step SDE rollout of G=4 candidates at 640 px, L=4 (`sampler.sample_group`);
  2. one GRPO-style step: LoRA r=64 (alpha 128, the 12 attention/MLP targets) with gradient
     checkpointing — replay of one trained step for one sample (`sampler.replay_log_prob`),
     clipped-ratio loss, backward, AdamW step.

Prints seconds, peak GPU memory, achieved TFLOP/s against an analytic FLOP estimate, and the card
name. Exits 0 with a message where CUDA is missing. `--smoke-cpu` runs the same code path with
2 blocks at 64 px on the CPU (a check that the script itself works, not a measurement).

Run:  python benchmarks/gpu_real_dims.py            (one GPU with ≥ 80 GB; a few minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

REAL = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
    "zero_cond_t": False,
    "use_additional_t_cond": True,
    "use_layer3d_rope": True,
}
TEXT_TOKENS = 40  # "a clean, well composed image" in the Qwen template after the 34 dropped tokens (approx.)


def build_transformer(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """Random-weight transformer built on the meta device, materialised directly on `device` in
    `dtype` (an fp32 CPU init of 20B parameters would take minutes and 80 GB)."""
    from diffusers import QwenImageTransformer2DModel
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedLayer3DRope

    with torch.device("meta"):
        tr = QwenImageTransformer2DModel(**cfg)
    tr = tr.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if p.ndim >= 2:  # small weights keep 60 random blocks finite in bf16
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    # the RoPE tables are plain attributes computed in __init__: they were built on meta
    tr.pos_embed = QwenEmbedLayer3DRope(theta=10000, axes_dim=list(cfg["axes_dims_rope"]), scale_rope=True)
    return tr.eval().requires_grad_(False)


def flops_per_forward(n_params: int, tokens: int, inner: int, blocks: int) -> float:
    """2·params·tokens for the matmuls + 4·S²·inner per block for QKᵀ and AV (per sample)."""
    return 2.0 * n_params * tokens + 4.0 * tokens**2 * inner * blocks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=640)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--smoke-cpu", action="store_true", help="2 blocks at 64 px on CPU: checks the script only")
    args = ap.parse_args()

    cfg = dict(REAL)
    if args.smoke_cpu:
        device, dtype = torch.device("cpu"), torch.float32
        cfg.update(num_layers=2, num_attention_heads=2, joint_attention_dim=64)
        args.resolution, args.steps = 64, 3
    elif not torch.cuda.is_available():
        print("gpu_real_dims: no CUDA device here; this check needs one GPU with >= 80 GB (H100/H200). Nothing run.")
        return 0
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16

    from peft import LoraConfig

    from stable_layers.policy import sampler as S
    from stable_layers.policy.model import Policy
    from stable_layers.policy.tiny import tiny_pipeline
    from stable_layers.spec import QWEN_LORA_TARGETS, SamplerSpec

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"device: {card}; torch {torch.__version__}")
    t0 = time.perf_counter()
    transformer = build_transformer(cfg, device, dtype)
    n_params = sum(p.numel() for p in transformer.parameters())
    pipe = tiny_pipeline(seed=0)  # tiny VAE with the real 8x geometry; scheduler and image processor are real
    pipe.register_modules(transformer=transformer)
    pipe.vae.to(device=device, dtype=dtype)
    prompt = torch.randn(1, TEXT_TOKENS, cfg["joint_attention_dim"], device=device, dtype=dtype)
    policy = Policy(pipe, transformer, device, dtype, prompt_embeds=prompt, prompt_mask=None)
    print(f"built transformer: {n_params / 1e9:.2f}B params in {time.perf_counter() - t0:.1f}s")

    sampler = SamplerSpec(
        train_steps=args.steps,
        resolution=args.resolution,
        layers=args.layers,
        sde_window_size=2,
        sde_window_range=(0, args.steps // 2),
        noise_level=1.2,
    )
    image = torch.randint(0, 255, (args.resolution, args.resolution, 4), dtype=torch.uint8).numpy()
    image[..., 3] = 255
    seeds = list(range(args.group))
    hw = (args.resolution // 16) ** 2
    tokens = (args.layers + 2) * hw + TEXT_TOKENS  # L+1 generated frames + condition frame + text
    f_fwd = flops_per_forward(
        n_params, tokens, cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["num_layers"]
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up: one short rollout (kernels, RoPE caches)
    S.sample_group(
        policy,
        image,
        group_size=1,
        sampler=sampler.model_copy(update={"train_steps": 2, "sde_window_range": (0, 1), "sde_window_size": 1}),
        seeds=[0],
        window_start=0,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    ro = S.sample_group(policy, image, group_size=args.group, sampler=sampler, seeds=seeds, window_start=1)
    sync()
    t_roll = time.perf_counter() - t0
    mem_roll = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    roll_flops = f_fwd * args.group * args.steps
    print(
        f"rollout G={args.group} L={args.layers} {args.resolution}px {args.steps} steps: {t_roll:.2f}s, "
        f"peak {mem_roll:.1f} GiB, {roll_flops / t_roll / 1e12:.1f} TFLOP/s achieved "
        f"(estimate {roll_flops:.3e} FLOP; {tokens} tokens/sample); log-probs finite: {bool(torch.isfinite(ro.log_probs).all())}"
    )

    transformer.add_adapter(
        LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, init_lora_weights="gaussian", target_modules=QWEN_LORA_TARGETS
        )
    )
    lora = [p for n, p in transformer.named_parameters() if ".lora_" in n]
    for p in lora:
        p.data = p.data.float()
        p.requires_grad_(True)
    transformer.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(lora, lr=1e-4)
    print(f"LoRA r={args.rank}: {sum(p.numel() for p in lora) / 1e6:.1f}M trainable params")

    def grpo_step() -> torch.Tensor:
        logp, _, _ = S.replay_log_prob(policy, ro, [0], 0)
        ratio = torch.exp(logp - ro.log_probs[:1, 0])
        adv = torch.ones_like(ratio)
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return ratio.detach()

    grpo_step()  # warm-up (optimizer state allocation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    ratio = grpo_step()
    sync()
    t_step = time.perf_counter() - t0
    mem_step = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    step_flops = 3 * f_fwd  # forward + checkpoint recompute + input-gradient backward (frozen base: no weight grads)
    print(
        f"GRPO step (1 sample, 1 trained step, grad ckpt): {t_step:.2f}s, peak {mem_step:.1f} GiB, "
        f"{step_flops / t_step / 1e12:.1f} TFLOP/s achieved (estimate {step_flops:.3e} FLOP); ratio {float(ratio[0]):.6f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
