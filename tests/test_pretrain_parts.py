"""The pieces of `pretrain-tiny` that decide what the tiny model learns: the canonical layer order
of its transformer targets, the VAE's reconstruction loss and its latent-path initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stable_layers.data.synthetic import make_design
from stable_layers.layers import canonical_order, composite_rgba
from stable_layers.pretrain.vae import apply_latent_path_gain, canonical_tensor_order, layer_reconstruction_loss


def _box(size: int, y0: int, y1: int, x0: int, x1: int, rgb: tuple[int, int, int], alpha: int = 255) -> np.ndarray:
    layer = np.zeros((size, size, 4), np.uint8)
    layer[y0:y1, x0:x1] = (*rgb, alpha)
    return layer


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.any((a[..., 3] > 0) & (b[..., 3] > 0)))


def test_canonical_order_puts_larger_free_layers_first_and_keeps_occlusions() -> None:
    bg = _box(16, 0, 16, 0, 16, (10, 20, 30))
    small = _box(16, 0, 3, 0, 3, (200, 0, 0))  # no overlap with `big`
    big = _box(16, 8, 16, 8, 16, (0, 200, 0))
    on_big = _box(16, 10, 12, 10, 12, (0, 0, 200))  # overlaps `big`, smaller than it
    # `on_big` under `big` is an occlusion and stays under it, although `big` is larger
    assert canonical_order([bg, small, on_big, big]) == [0, 1, 2, 3]
    # each step takes the largest layer that nothing remaining below it overlaps
    assert canonical_order([bg, small, big, on_big]) == [0, 2, 1, 3]
    assert canonical_order([bg, small, big]) == [0, 2, 1]
    assert canonical_order([bg, big, small]) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(40))
def test_canonical_order_composites_to_the_same_design(seed: int) -> None:
    d = make_design(seed, 96)
    order = canonical_order(d.layers)
    assert sorted(order) == list(range(len(d.layers))) and order[0] == 0
    reordered = [d.layers[i] for i in order]
    np.testing.assert_array_equal(composite_rgba(reordered), composite_rgba(d.layers))
    pos = {layer: k for k, layer in enumerate(order)}
    for i in range(len(d.layers)):
        for j in range(i + 1, len(d.layers)):
            if _overlap(d.layers[i], d.layers[j]):
                assert pos[i] < pos[j], (seed, i, j, order)


def test_canonical_tensor_order_matches_the_array_version() -> None:
    d = make_design(7, 64)
    t = torch.from_numpy(np.stack(d.layers)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert canonical_tensor_order(t) == canonical_order(d.layers)


def _frame(rgb: float, alpha: float) -> torch.Tensor:
    x = torch.empty(1, 4, 1, 2, 2)
    x[:, :3] = rgb
    x[:, 3] = alpha
    return x


def test_reconstruction_loss_weights_colour_under_transparency() -> None:
    x = _frame(0.0, 1.0)
    x[..., 0, :] = -1.0  # top row fully transparent, black under it (the generator's canonical colour)
    rec = x.clone()
    rec[:, :3, :, 0, :] = 0.0  # colour error 1 only where nothing is visible
    unweighted = layer_reconstruction_loss(rec, x, mse_weight=0.0, transparent_rgb_weight=1.0)
    weighted = layer_reconstruction_loss(rec, x, mse_weight=0.0, transparent_rgb_weight=0.05)
    assert unweighted.item() == pytest.approx(0.5)
    assert weighted.item() == pytest.approx(2 * 0.05 / (2 + 2 * 0.05))
    visible = _frame(0.0, 1.0)
    rec = visible.clone()
    rec[:, :3] = 0.5
    assert layer_reconstruction_loss(rec, visible, 0.0, 0.05).item() == pytest.approx(0.5)
    assert layer_reconstruction_loss(rec, visible, 4.0, 0.05).item() == pytest.approx(0.5 + 4 * 0.25)


def test_reconstruction_loss_ignores_overshoot_beyond_a_bound() -> None:
    x = _frame(-1.0, 1.0)  # black, opaque: both targets on a bound
    outward = x.clone()
    outward[:, :3], outward[:, 3] = -1.5, 1.5
    assert layer_reconstruction_loss(outward, x, 4.0, 0.05).item() == 0.0
    inward = x.clone()
    inward[:, :3], inward[:, 3] = -0.5, 0.5
    assert layer_reconstruction_loss(inward, x, 0.0, 0.05).item() == pytest.approx(0.5 + 0.5)


def test_latent_path_gain_scales_the_latent_convolutions_and_zeroes_biases() -> None:
    from stable_layers.policy.tiny import build_vae

    vae = build_vae(base_dim=8, seed=0)
    before = vae.quant_conv.weight.detach().clone()
    apply_latent_path_gain(vae, 8.0)
    torch.testing.assert_close(vae.quant_conv.weight.detach(), 8.0 * before)
    assert all(float(p.abs().max()) == 0.0 for n, p in vae.named_parameters() if n.endswith("bias"))


def test_logit_mean_moves_training_noise_levels_up_without_changing_the_default() -> None:
    from stable_layers.pretrain.dit import sample_sigmas, shifted_sigmas

    def draw(mean: float) -> torch.Tensor:
        return sample_sigmas(4000, 16, torch.Generator().manual_seed(3), mean)

    base, high = draw(0.0), draw(2.0)
    # mean 0 is the SD3 logit-normal: u = sigmoid(z), then the time shift
    z = torch.randn(4000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(base, shifted_sigmas(torch.sigmoid(z).clamp(1e-4, 1 - 1e-4), 16))
    assert float(base.median()) == pytest.approx(float(shifted_sigmas(torch.tensor(0.5), 16)), abs=0.03)
    assert float((high > 0.9).float().mean()) > 3 * float((base > 0.9).float().mean())
    assert float(high.min()) > 0.0 and float(high.max()) < 1.0


def test_content_weights_emphasise_element_pixels_only() -> None:
    from stable_layers.pretrain.dit import content_weights

    transparent = torch.zeros(4, 2, 2)
    x0 = torch.zeros(1, 4, 4, 2, 2)  # composite, background, two element frames
    x0[:, :2] = 3.0  # composite and background differ from transparent everywhere
    x0[0, 2, :, 0, 1] = 1.0  # element pixel: mean squared distance 1 > 0.5
    x0[0, 3, :, 1, 1] = 0.5  # faint: 0.25 < 0.5, counts as transparent
    w = content_weights(x0, transparent, 4.0, 0.5)
    assert w.shape == (1, 4, 1, 2, 2)
    expected = torch.ones(1, 4, 1, 2, 2)
    expected[0, 2, 0, 0, 1] = 4.0
    assert torch.equal(w, expected)
    assert torch.equal(content_weights(x0, transparent, 1.0, 0.5), torch.ones(1, 4, 1, 2, 2))


def test_weighted_flow_loss_is_the_weighted_mean_of_squared_velocity_errors() -> None:
    from stable_layers.pretrain.config import PretrainConfig
    from stable_layers.pretrain.dit import flow_matching_loss, pack
    from stable_layers.pretrain.run import build_components

    torch.manual_seed(0)
    cfg = PretrainConfig(dit_layers=1, dit_heads=1, axes_dims_rope=(8, 12, 12))
    transformer = build_components(cfg)["transformer"].eval()
    x0, noise = torch.randn(2, 3, 16, 4, 4), torch.randn(2, 3, 16, 4, 4)
    sig = torch.tensor([0.3, 0.8])
    embeds = torch.randn(1, 5, cfg.text_dim)
    with torch.no_grad():
        plain = flow_matching_loss(transformer, x0, sig, noise, embeds, None)
        ones = flow_matching_loss(transformer, x0, sig, noise, embeds, None, torch.ones(2, 3, 1, 4, 4))
        only = torch.zeros(2, 3, 1, 4, 4)
        only[:, 2] = 1.0  # weight on the last frame alone: its own mean error
        last = flow_matching_loss(transformer, x0, sig, noise, embeds, None, only)
        # the same number from the per-frame errors: frame 2's share of the packed sequence
        s = sig.view(2, 1, 1, 1, 1)
        out = transformer(
            hidden_states=torch.cat([pack((1 - s) * x0 + s * noise), pack(x0[:, :1])], 1),
            timestep=sig,
            encoder_hidden_states=embeds.expand(2, -1, -1),
            img_shapes=[[(1, 2, 2)] * 4] * 2,
            additional_t_cond=torch.zeros(2, dtype=torch.long),
            return_dict=False,
        )[0][:, :12]
        err = (out - pack(noise - x0)).pow(2)
    torch.testing.assert_close(ones, plain)
    torch.testing.assert_close(last, err[:, 8:12].mean())
    assert abs(float(last) - float(plain)) > 1e-4
