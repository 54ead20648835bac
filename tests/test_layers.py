"""Shared StyleGAN-family layers (models/layers.py): the properties the three models rely on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facegan.ops import setup_filter, upsample2d
from models import layers


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def interior_variance(y: torch.Tensor, border: int = 1) -> float:
    return y[..., border:-border, border:-border].var().item()


@pytest.mark.parametrize("fused", [True, False])
def test_demodulation_keeps_unit_variance(fused):
    # Unit-variance iid input, styles far from 1: with demodulation each output channel has
    # variance sum_i (s_i w_ij)^2 / ||s w_j||^2 = 1 (StyleGAN2 eq. 3). 8*64*14*14 ~ 100k samples
    # per estimate, so the standard error of the variance is ~0.5%; tolerance 5%.
    conv = layers.ModulatedConv2d(64, 64, 3, w_dim=16)
    x = torch.randn(8, 64, 16, 16)
    w = torch.randn(8, 16) * 3  # styles with a spread well away from 1
    with torch.no_grad():
        y = conv(x, w, fused=fused)
        assert conv.affine(w).std() > 1.5
        assert interior_variance(y) == pytest.approx(1.0, abs=0.05)
        # per output channel too, not only on average (each channel estimated from ~1.5k samples)
        per_channel = y[..., 1:-1, 1:-1].transpose(0, 1).flatten(1).var(dim=1)
        assert per_channel.min() > 0.85 and per_channel.max() < 1.15


def test_without_demodulation_variance_follows_styles():
    # the control case: the same conv without demodulation scales with the styles, so the
    # unit-variance check above can fail
    conv = layers.ModulatedConv2d(64, 64, 3, w_dim=16, demodulate=False)
    with torch.no_grad():
        conv.affine.bias.fill_(3.0)
        y = conv(torch.randn(8, 64, 16, 16), torch.zeros(8, 16))
    assert interior_variance(y) > 4.0


def test_fused_and_unfused_modulated_conv_agree_with_upsampling():
    conv = layers.ModulatedConv2d(8, 6, 3, w_dim=16, up=2)
    x, w = torch.randn(3, 8, 8, 8), torch.randn(3, 16)
    a, b = conv(x, w, fused=True), conv(x, w, fused=False)
    assert a.shape == (3, 6, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_upsampling_conv_is_fir_upsample_then_conv():
    # the transposed-conv fast form equals "FIR upsample, then 3x3 convolution" away from the border;
    # a true convolution with w (F.conv2d correlates, hence the flip), as NVlabs' up-sampling layer
    # computes it (flip_weight=False), so that official weights load unflipped
    f = setup_filter([1, 3, 3, 1])
    x, w = torch.randn(2, 4, 8, 8), torch.randn(5, 4, 3, 3)
    fast = layers.conv2d_resample(x, w, f, up=2, padding=1)
    slow = F.conv2d(upsample2d(x, f), w.flip([2, 3]), padding=1)
    torch.testing.assert_close(fast[..., 2:-2, 2:-2], slow[..., 2:-2, 2:-2], atol=1e-4, rtol=1e-4)


def test_downsampling_conv_halves_resolution():
    conv = layers.Conv2dLayer(4, 6, 3, down=2, activation="lrelu")
    assert conv(torch.randn(2, 4, 16, 16)).shape == (2, 6, 8, 8)


def test_equalised_lr_scales_weights_at_runtime():
    fc = layers.FullyConnectedLayer(100, 10, lr_multiplier=0.01)
    # stored weights are N(0, 1)/lr_mult, effective ones N(0, 1/in): the optimiser sees scaled steps
    assert fc.weight.std().item() == pytest.approx(100, rel=0.1)
    assert (fc.weight * fc.weight_gain).std().item() == pytest.approx(0.1, rel=0.1)


def test_mapping_tracks_w_avg_only_when_asked_and_truncates_to_it():
    mapping = layers.MappingNetwork(z_dim=8, w_dim=8, num_ws=3, num_layers=2, lr_multiplier=0.01, w_avg_beta=0.5)
    z = torch.randn(64, 8)
    mapping.train()
    mapping(z)
    assert torch.count_nonzero(mapping.w_avg) == 0  # training mode alone does not move it
    w = mapping(z, update_emas=True)[:, 0]
    torch.testing.assert_close(mapping.w_avg, 0.5 * w.mean(0).detach())
    mapping.eval()
    ws = mapping(torch.randn(4, 8), truncation_psi=0.0)
    torch.testing.assert_close(ws, mapping.w_avg.expand(4, 3, 8))
    half = mapping(z[:4], truncation_psi=0.5, truncation_cutoff=1)
    torch.testing.assert_close(half[:, 0], mapping.w_avg.lerp(mapping(z[:4])[:, 0], 0.5))
    torch.testing.assert_close(half[:, 1:], mapping(z[:4])[:, 1:])


def test_minibatch_stddev_appends_group_std():
    mbstd = layers.MinibatchStdDev(group_size=4, num_channels=1)
    x = torch.randn(8, 3, 2, 2)
    y = mbstd(x)
    assert y.shape == (8, 4, 2, 2)
    # sample i belongs to group (i mod 8/4): samples {0, 2, 4, 6} and {1, 3, 5, 7}
    group = x[0::2]
    expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(y[0, 3, 0, 0], expected)
    torch.testing.assert_close(y[6, 3, 1, 1], expected)


def test_residual_discriminator_sizes_from_params():
    D = layers.ResidualDiscriminator(
        32, 3, channel_base=256, channel_max=16, mbstd_group_size=4, conv_clamp=256, num_fp16_res=4
    )
    assert [b.conv0.in_channels for b in D.blocks] == [8, 16, 16]  # 256/32, 256/16 -> capped 16, ...
    logits = D(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 1)


def test_low_precision_only_under_autocast_and_only_in_marked_blocks():
    cpu = torch.device("cpu")
    assert layers.block_precision(True, cpu)[0] == torch.float32  # fp32 training: every block fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        marked, context = layers.block_precision(True, cpu)
        unmarked, _ = layers.block_precision(False, cpu)
        with context:  # the block casts explicitly: autocast is off inside it
            assert not torch.is_autocast_enabled("cpu")
    assert (marked, unmarked) == (torch.bfloat16, torch.float32)


def test_noise_injection_modes():
    noise = layers.NoiseInjection(8, per_channel=True, channels=3)
    with torch.no_grad():
        noise.strength.fill_(1.0)
    x = torch.zeros(2, 3, 8, 8)
    assert torch.equal(noise(x, "none"), x)
    torch.testing.assert_close(noise(x, "const"), noise(x, "const"))
    assert not torch.equal(noise(x, "random"), noise(x, "random"))
    assert math.isclose(noise(torch.zeros(16, 3, 8, 8), "random").std().item(), 1.0, rel_tol=0.1)
