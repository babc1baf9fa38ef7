"""Tiny, randomly initialised components of the real Qwen-Image-Layered classes (no downloads).

Every builder returns an instance of the class the real model uses, with the real layout where it
matters to the code around it: the RGBA VAE has the real 8x spatial geometry and 16 latent
channels, the transformer has the layered flags (`use_layer3d_rope`, `use_additional_t_cond`),
the scheduler has the Qwen-Image settings. Only widths and depths are tiny, and all of them are
keyword arguments so that `stable-layers pretrain-tiny` can train a bigger model of the same
builders (shared/docs/model.md §3).

`tiny_pipeline(seed)` is deterministic given the seed and survives
`save_pretrained` → `QwenImageLayeredPipeline.from_pretrained` (see `with_processor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageLayeredPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
Z_DIM = 16
"""Latent channels of the VAE, as the real model. Must not be 4: `prepare_latents` treats any input
whose channel count equals z_dim as already-encoded latents, and an RGBA image has 4 channels
(model.md §6.6)."""
VAE_SCALE = 8
"""Spatial factor of the real RGBA VAE."""

QWEN_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
"""FlowMatchEulerDiscreteScheduler settings of Qwen-Image (dynamic exponential shift and terminal
stretch), assumed identical for the layered model (model.md §5)."""


def build_tokenizer() -> Qwen2Tokenizer:
    """Byte-level `Qwen2Tokenizer`: the 256 byte symbols, no merges, plus the Qwen specials.

    Every string encodes (one token per UTF-8 byte), so the pipeline's real prompt template works.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )


def _processor_class() -> type[Qwen2VLProcessor]:
    from transformers import Qwen2VLProcessor

    class LocalQwen2VLProcessor(Qwen2VLProcessor):
        """`Qwen2VLProcessor` that skips the video-processor class check.

        transformers 5.x looks the class up in a registry that only exists with torchvision, so
        construction crashes without it even for `video_processor=None` (model.md §6.1). The
        processor is only used for auto-captioning, which takes images only.
        """

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
            return type(argument)

    return LocalQwen2VLProcessor


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """Images-only Qwen2-VL processor with a small pixel budget (few vision tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)


def build_text_encoder(
    tokenizer: Qwen2Tokenizer,
    *,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> Qwen2_5_VLForConditionalGeneration:
    """Tiny `Qwen2_5_VLForConditionalGeneration`; `hidden_size` must equal the transformer's
    `joint_attention_dim`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden_size // num_heads
    if head_dim % 4 or head_dim * num_heads != hidden_size:
        raise ValueError(
            f"text encoder hidden_size {hidden_size} / num_heads {num_heads} must give a head dim divisible by 4"
        )
    quarter = head_dim // 4
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_heads,
            # multimodal RoPE sections must sum to head_dim / 2
            "rope_scaling": {
                "mrope_section": [quarter // 2 or 1, quarter - (quarter // 2 or 1), quarter],
                "rope_type": "default",
            },
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model


def build_transformer(
    *,
    num_layers: int = 2,
    attention_head_dim: int = 16,
    num_attention_heads: int = 2,
    joint_attention_dim: int = 16,
    axes_dims_rope: Sequence[int] = (8, 4, 4),
    seed: int = 0,
) -> QwenImageTransformer2DModel:
    """Layered `QwenImageTransformer2DModel` (layer-3D RoPE, additional t-cond), random weights.

    `axes_dims_rope` must sum to `attention_head_dim` (frame, height, width axes).
    """
    from diffusers import QwenImageTransformer2DModel

    if sum(axes_dims_rope) != attention_head_dim:
        raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim {attention_head_dim}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * Z_DIM,
            out_channels=Z_DIM,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim,
            guidance_embeds=False,
            axes_dims_rope=tuple(axes_dims_rope),
            zero_cond_t=False,
            use_additional_t_cond=True,
            use_layer3d_rope=True,
        ).eval()


def build_vae(
    *,
    base_dim: int = 8,
    num_res_blocks: int = 1,
    dim_mult: Sequence[int] = (1, 1, 1, 1),
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
    seed: int = 0,
) -> AutoencoderKLQwenImage:
    """RGBA `AutoencoderKLQwenImage` with the real 8x spatial factor and z_dim 16.

    The spatial factor is `2 ** len(temperal_downsample)`, so `dim_mult` has 4 entries (3 down
    stages, like the real `[1, 2, 4, 4]`). `latents_mean/std` default to 0/1 (random weights have
    no statistics to normalise by); a trained tiny VAE can pass its own.
    """
    from diffusers import AutoencoderKLQwenImage

    n_down = int(math.log2(VAE_SCALE))
    if len(dim_mult) != n_down + 1:
        raise ValueError(f"dim_mult needs {n_down + 1} entries for the 8x VAE, got {list(dim_mult)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLQwenImage(
            base_dim=base_dim,
            z_dim=Z_DIM,
            dim_mult=list(dim_mult),
            num_res_blocks=num_res_blocks,
            attn_scales=[],
            temperal_downsample=[False] + [True] * (n_down - 1),
            input_channels=4,
            latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * Z_DIM,
            latents_std=list(latents_std) if latents_std is not None else [1.0] * Z_DIM,
        ).eval()


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """`FlowMatchEulerDiscreteScheduler` with the Qwen-Image configuration."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)


def tiny_pipeline(
    seed: int = 0,
    *,
    num_layers: int = 2,
    attention_head_dim: int = 16,
    num_attention_heads: int = 2,
    text_dim: int = 16,
    text_layers: int = 2,
    axes_dims_rope: Sequence[int] = (8, 4, 4),
    vae_base_dim: int = 8,
    vae_num_res_blocks: int = 1,
    vae_dim_mult: Sequence[int] = (1, 1, 1, 1),
    with_processor: bool = False,
) -> QwenImageLayeredPipeline:
    """A random `QwenImageLayeredPipeline` of tiny same-class components; deterministic in `seed`.

    `with_processor=False` (default) registers no processor: it is only used by the auto-caption
    path, which this project never takes (the prompt is fixed), and a saved Qwen2-VL processor
    cannot be reloaded by `from_pretrained` without torchvision (model.md §6.1). Pass True to get
    the images-only workaround processor (the pipeline can then auto-caption, but is not
    reloadable from disk on a machine without torchvision).
    """
    from diffusers import QwenImageLayeredPipeline

    tokenizer = build_tokenizer()
    pipe = QwenImageLayeredPipeline(
        scheduler=build_scheduler(),
        vae=build_vae(base_dim=vae_base_dim, num_res_blocks=vae_num_res_blocks, dim_mult=vae_dim_mult, seed=seed + 1),
        text_encoder=build_text_encoder(tokenizer, hidden_size=text_dim, num_layers=text_layers, seed=seed + 2),
        tokenizer=tokenizer,
        processor=build_processor(tokenizer) if with_processor else None,
        transformer=build_transformer(
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            joint_attention_dim=text_dim,
            axes_dims_rope=axes_dims_rope,
            seed=seed,
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
