"""StyleGAN3's alias-free machinery: filter design, the cut-off schedule and translation
equivariance (EQ-T, Karras et al. 2021 sec. 4 / appendix E) of an untrained network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models import stylegan3
from tests.helpers import study_arch

# EQ-T of the untrained 32x32 network below, measured on this code: ~80 dB (translation by
# 1.25 px), ~30-36 dB with the anti-aliasing filters replaced by nearest-neighbour upsampling and
# plain decimation. The paper's trained StyleGAN3-T reaches 61-66 dB; we require 60 dB.
EQ_T_THRESHOLD_DB = 60.0
SHIFT_PX = 1.25
SINC_HALF_TAPS = 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def fractional_shift_x(img: torch.Tensor, shift: float, half: int = SINC_HALF_TAPS) -> torch.Tensor:
    """out[x] = img[x - shift] by a Kaiser-windowed sinc (band-limited interpolation); the result
    loses `half` columns on each side."""
    k = torch.arange(-half, half + 1, dtype=torch.float64)
    taps = torch.sinc(k + shift) * torch.from_numpy(np.kaiser(2 * half + 1, 8.0))
    taps = (taps / taps.sum()).to(img.dtype)
    return F.conv2d(img, taps.view(1, 1, 1, -1).expand(img.shape[1], 1, 1, -1), groups=img.shape[1])


def eq_t_psnr(G, ws: torch.Tensor, shift_px: float) -> float:
    """PSNR (dB, peak = the reference image's peak-to-peak range) between the output for input
    Fourier features translated by shift_px along x and the original output translated by the same
    amount in pixel space, over the interior (as EQ-T does with its valid-region mask)."""
    syn = G.synthesis
    with torch.no_grad():
        img = syn(ws)
        syn.input.transform[0, 2] = shift_px / G.img_resolution  # the image spans one unit
        moved = syn(ws)
        syn.input.transform.copy_(torch.eye(3))
    # a transform offset d samples the features at p + d, so the image content moves by -d
    expected = fractional_shift_x(img, -shift_px)
    moved = moved[..., SINC_HALF_TAPS:-SINC_HALF_TAPS]
    m = 4  # rows/columns near the border see content entering the canvas
    err = (expected[..., m:-m, m:-m] - moved[..., m:-m, m:-m]).square().mean().item()
    peak = (img.max() - img.min()).item()
    return 20 * math.log10(peak) - 10 * math.log10(err)


def small_t(resolution: int = 32):
    G, _ = models.build(
        "stylegan3",
        study_arch("stylegan3", config="t", z_dim=32, w_dim=32, channel_base=2048, channel_max=32, num_layers=6),
        resolution,
    )
    return G.eval()


def without_antialiasing(G) -> None:
    """Replace every Kaiser filter by nearest-neighbour upsampling / plain decimation (same taps,
    so the canvas sizes stay): the aliasing StyleGAN3 removes."""
    for layer in G.synthesis.layer_list:
        if layer.up_filter is not None:
            n = layer.up_filter.numel()
            nearest = torch.zeros(n)
            nearest[n // 2 - 1 : n // 2 + 1] = 0.5
            layer.up_filter.copy_(nearest)
        if layer.down_filter is not None:
            n = layer.down_filter.shape[-1]
            delta = torch.zeros_like(layer.down_filter)
            delta[(n // 2,) * delta.ndim] = 1.0
            layer.down_filter.copy_(delta)


def test_stylegan3_t_is_translation_equivariant_and_the_check_can_fail():
    G = small_t()
    ws = G.mapping(torch.randn(2, 32))
    psnr = eq_t_psnr(G, ws, SHIFT_PX)
    assert psnr > EQ_T_THRESHOLD_DB, f"EQ-T {psnr:.1f} dB"
    without_antialiasing(G)
    broken = eq_t_psnr(G, ws, SHIFT_PX)
    assert broken < EQ_T_THRESHOLD_DB - 15, f"aliasing variant scored {broken:.1f} dB"


def test_translated_input_actually_moves_the_image():
    G = small_t()
    ws = G.mapping(torch.randn(1, 32))
    with torch.no_grad():
        a = G.synthesis(ws)
        G.synthesis.input.transform[0, 2] = 3 / 32
        b = G.synthesis(ws)
    assert (a - b).abs().mean() > 0.2 * a.abs().mean()


def test_kaiser_lowpass_passes_dc_and_stops_the_stopband():
    fs, cutoff, half_width = 64.0, 8.0, 6.0
    f = stylegan3.design_lowpass_filter(24, cutoff, 2 * half_width, fs)
    assert f.ndim == 1 and f.sum().item() == pytest.approx(1.0, abs=1e-6)
    spectrum = np.abs(np.fft.rfft(f.numpy(), 4096))
    freqs = np.fft.rfftfreq(4096, 1 / fs)
    assert spectrum[freqs <= cutoff - half_width].min() > 0.95
    assert spectrum[freqs >= cutoff + half_width].max() < 0.05  # paper: stop-band from f_c + f_h


def test_radial_filter_is_radially_symmetric_and_2d():
    f = stylegan3.design_lowpass_filter(12, 4.0, 6.0, 32.0, radial=True)
    assert f.shape == (12, 12) and f.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(f, f.t())
    torch.testing.assert_close(f, f.flip(0))


def test_schedule_follows_the_paper_at_1024():
    # fig. 4b: f_c from 2 to 512 over the first 12 layers, sampling rates 16 .. 1024, canvases
    # with 10-px margins, the final two layers at the output size.
    s = stylegan3.synthesis_schedule(1024, 14, 2, 2.0, 2**2.1, 2**0.3, 10, 32768, 512, 3)
    assert s["cutoffs"][0] == 2 and s["cutoffs"][12:].tolist() == [512] * 3
    assert s["sampling_rates"].tolist() == [16, 16, 32, 32, 64, 128, 128, 256, 256, 512, 1024, 1024, 1024, 1024, 1024]
    assert s["sizes"].tolist() == [36, 36, 52, 52, 84, 148, 148, 276, 276, 532, 1044, 1044, 1044, 1024, 1024]
    assert s["channels"][0] == 512 and s["channels"][-1] == 3
    assert np.all(np.diff(s["cutoffs"]) >= 0) and np.all(s["stopbands"] > s["cutoffs"])


def test_config_r_uses_1x1_convs_and_radial_filters():
    G, _ = models.build(
        "stylegan3",
        study_arch("stylegan3", config="r", z_dim=32, w_dim=32, channel_base=512, channel_max=16, num_layers=4),
        32,
    )
    layers_ = G.synthesis.layer_list
    assert all(layer.weight.shape[-1] == 1 for layer in layers_)
    assert any(layer.down_filter is not None and layer.down_filter.ndim == 2 for layer in layers_)
    assert G(torch.randn(2, 32)).shape == (2, 3, 32, 32)


def test_every_layer_updates_its_magnitude_ema_only_when_asked_torgb_included():
    """Official SynthesisLayer: `if update_emas:` for every layer, ToRGB too; never from training mode alone."""
    G = small_t().train()
    ws = G.mapping(torch.randn(2, 32))
    G.synthesis(ws)
    assert all(layer.magnitude_ema.item() == 1.0 for layer in G.synthesis.layer_list)
    G.synthesis(ws, update_emas=True)
    torgb = G.synthesis.layer_list[-1]
    assert torgb.is_torgb
    assert all(layer.magnitude_ema.item() != 1.0 for layer in G.synthesis.layer_list)


def test_bad_config_is_a_user_error():
    from facegan.errors import UserError

    with pytest.raises(UserError, match="config"):
        models.build("stylegan3", study_arch("stylegan3", config="x"), 32)
