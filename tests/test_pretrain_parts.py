"""The pieces of `pretrain-tiny` that decide what the tiny model learns: the canonical layer order
of its transformer targets, the VAE's reconstruction loss and its latent-path initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stable_layers.data.synthetic import make_design
from stable_layers.layers import canonical_order, composite_rgba
from stable_layers.pretrain_vae import apply_latent_path_gain, canonical_tensor_order, layer_reconstruction_loss


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
    from stable_layers.tiny import build_vae

    vae = build_vae(base_dim=8, seed=0)
    before = vae.quant_conv.weight.detach().clone()
    apply_latent_path_gain(vae, 8.0)
    torch.testing.assert_close(vae.quant_conv.weight.detach(), 8.0 * before)
    assert all(float(p.abs().max()) == 0.0 for n, p in vae.named_parameters() if n.endswith("bias"))


def test_logit_mean_moves_training_noise_levels_up_without_changing_the_default() -> None:
    from stable_layers.pretrain_dit import sample_sigmas, shifted_sigmas

    def draw(mean: float) -> torch.Tensor:
        return sample_sigmas(4000, 16, torch.Generator().manual_seed(3), mean)

    base, high = draw(0.0), draw(2.0)
    # mean 0 is the SD3 logit-normal: u = sigmoid(z), then the time shift
    z = torch.randn(4000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(base, shifted_sigmas(torch.sigmoid(z).clamp(1e-4, 1 - 1e-4), 16))
    assert float(base.median()) == pytest.approx(float(shifted_sigmas(torch.tensor(0.5), 16)), abs=0.03)
    assert float((high > 0.9).float().mean()) > 3 * float((base > 0.9).float().mean())
    assert float(high.min()) > 0.0 and float(high.max()) < 1.0
