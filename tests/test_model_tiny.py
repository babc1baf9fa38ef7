"""Tiny same-class components: real classes and geometry, determinism, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stable_layers.policy import tiny


def _velocity(pipe: object, seed: int = 0) -> torch.Tensor:
    tr = pipe.transformer  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3 * 4, 64, generator=g)  # 2 generated frames + condition, 2x2 tokens each
    txt = torch.randn(1, 5, tr.config.joint_attention_dim, generator=g)
    with torch.no_grad():
        return tr(
            hidden_states=x,
            timestep=torch.tensor([0.5]),
            encoder_hidden_states=txt,
            encoder_hidden_states_mask=None,
            img_shapes=[[(1, 2, 2)] * 3],
            additional_t_cond=torch.zeros(1, dtype=torch.long),
            return_dict=False,
        )[0]


def test_real_classes_and_geometry() -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImageLayeredPipeline, QwenImageTransformer2DModel

    pipe = tiny.tiny_pipeline()
    assert isinstance(pipe, QwenImageLayeredPipeline)
    assert isinstance(pipe.transformer, QwenImageTransformer2DModel) and isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert pipe.vae_scale_factor == 8 and pipe.latent_channels == 16
    assert pipe.vae.config.input_channels == 4
    assert pipe.transformer.config.use_layer3d_rope and pipe.transformer.config.use_additional_t_cond
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    assert pipe.scheduler.config.shift_terminal == 0.02 and pipe.scheduler.config.time_shift_type == "exponential"
    # byte-level tokenizer: the real prompt template encodes, one token per byte
    assert len(pipe.tokenizer("héllo").input_ids) == len("héllo".encode())
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompt=["a clean, well composed image"], device=torch.device("cpu"))
    assert emb.shape[-1] == 16 and torch.isfinite(emb).all()


def test_deterministic_in_seed_and_dims_are_kwargs() -> None:
    a, b, c = tiny.tiny_pipeline(0), tiny.tiny_pipeline(0), tiny.tiny_pipeline(1)
    assert torch.equal(_velocity(a), _velocity(b))
    assert not torch.allclose(_velocity(a), _velocity(c))
    big = tiny.tiny_pipeline(
        0, num_layers=3, attention_head_dim=32, text_dim=32, axes_dims_rope=(16, 8, 8), vae_base_dim=16
    )
    assert len(big.transformer.transformer_blocks) == 3 and big.transformer.inner_dim == 64
    assert big.text_encoder.config.text_config.hidden_size == 32 and big.vae.config.base_dim == 16
    with pytest.raises(ValueError, match="axes_dims_rope"):
        tiny.build_transformer(attention_head_dim=16, axes_dims_rope=(8, 8, 8))


def test_building_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.tiny_pipeline(5)
    assert torch.equal(torch.rand(3), expected)


def test_save_pretrained_from_pretrained_round_trip(tmp_path: Path) -> None:
    from diffusers import QwenImageLayeredPipeline

    pipe = tiny.tiny_pipeline(3)
    pipe.save_pretrained(tmp_path)
    # processor=None: a saved Qwen2-VL processor needs torchvision to load (model.md §6.1)
    loaded = QwenImageLayeredPipeline.from_pretrained(tmp_path, processor=None)
    # identical weights; outputs agree to float rounding (the loaded model is built on the meta
    # device, which recomputes the RoPE tables slightly differently)
    torch.testing.assert_close(_velocity(loaded), _velocity(pipe), rtol=0, atol=1e-5)
    assert loaded.tokenizer("layers").input_ids == pipe.tokenizer("layers").input_ids
    assert loaded.vae_scale_factor == 8
    for name, p in pipe.vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[name], p)


def test_workaround_processor_builds_without_torchvision() -> None:
    from transformers import Qwen2VLProcessor

    pipe = tiny.tiny_pipeline(with_processor=True)
    assert isinstance(pipe.processor, Qwen2VLProcessor)
