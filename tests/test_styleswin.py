"""StyleSwin (models/styleswin.py): window attention against a naive reference, the shift mask,
positional encodings, the Haar wavelets, G/D forward and backward, and the published size."""

from __future__ import annotations

import copy
import inspect
import math
import re
from pathlib import Path

import pytest
import torch

import models
from facegan.errors import UserError
from facegan.params import load_params
from models import styleswin as ss

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

TINY_ARCH = dict(
    z_dim=32,
    w_dim=32,
    mapping_layers=2,
    mapping_lr_multiplier=0.01,
    window_size=4,
    window_layout="masked",
    blocks_per_stage=2,
    head_dim=8,
    min_heads=2,
    mlp_ratio=2.0,
    g_channel_base=512,
    d_channel_base=512,
    channel_max=32,
)


def naive_double_attention(module: ss.DoubleWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Double attention written pixel by pixel in image coordinates, without partition, roll or
    mask tensors: a query attends to the keys of its window (regular half) or of its window in
    the grid shifted by `shift` (shifted half), except keys whose shifted-grid offset differs from
    their image offset, i.e. keys that the cyclic shift wrapped over from the other border."""
    B, H, W, C = x.shape
    w, s, half = module.window, module.shift, C // 2
    heads = module.heads // 2
    d = half // heads
    q, k, v = module.qkv(x).unflatten(-1, (3, C)).unbind(-2)
    out = torch.zeros(B, H, W, C)
    for part, shift in ((0, 0), (1, s)):
        channels = slice(part * half, (part + 1) * half)
        table = module.bias_tables[part]
        for i in range(H):
            for j in range(W):
                si, sj = (i - shift) % H, (j - shift) % W  # position in the shifted grid
                keys = [
                    (a, b)
                    for a in range(H)
                    for b in range(W)
                    if ((a - shift) % H) // w == si // w
                    and ((b - shift) % W) // w == sj // w
                    and (si - (a - shift) % H) == i - a
                    and (sj - (b - shift) % W) == j - b
                ]
                for h in range(heads):
                    ch = slice(channels.start + h * d, channels.start + (h + 1) * d)
                    scores = torch.stack(
                        [
                            (q[:, i, j, ch] * k[:, a, b, ch]).sum(-1) / math.sqrt(d)
                            + table[(i - a + w - 1) * (2 * w - 1) + (j - b + w - 1), h]
                            for a, b in keys
                        ],
                        -1,
                    )
                    weights = scores.softmax(-1)
                    values = torch.stack([v[:, a, b, ch] for a, b in keys], 1)
                    out[:, i, j, ch] = (weights[:, :, None] * values).sum(1)
    return module.proj(out)


@torch.no_grad()
def test_double_attention_through_sdpa_matches_naive_reference():
    torch.manual_seed(0)
    module = ss.DoubleWindowAttention(dim=16, resolution=8, window=4, heads=4, layout="masked")
    assert (module.window, module.shift) == (4, 2)
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(module(x), naive_double_attention(module, x), atol=1e-5, rtol=1e-5)
    # the einsum reference path agrees too, so it can stand in for SDPA in other checks
    torch.testing.assert_close(module(x), module(x, attention=ss.window_attention_ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resolution, window", [(8, 4), (16, 4), (16, 8)])
def test_split_window_layout_computes_the_masked_layouts_function_and_gradients(resolution, window):
    """window_layout=split (the shifted half cut into pieces that need no mask) is a speed option:
    the same weights give the same output and the same gradients as the official masked layout."""
    torch.manual_seed(0)
    masked = ss.DoubleWindowAttention(dim=16, resolution=resolution, window=window, heads=4, layout="masked")
    split = ss.DoubleWindowAttention(dim=16, resolution=resolution, window=window, heads=4, layout="split")
    split.load_state_dict(masked.state_dict())
    assert split.layout == "split" and split.shift == window // 2
    x = torch.randn(2, resolution, resolution, 16, requires_grad=True)
    y_masked, y_split = masked(x), split(x)
    torch.testing.assert_close(y_split, y_masked, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(y_masked)
    grads_masked = torch.autograd.grad(y_masked, [x, *masked.parameters()], upstream)
    grads_split = torch.autograd.grad(y_split, [x, *split.parameters()], upstream)
    for g_masked, g_split in zip(grads_masked, grads_split):
        torch.testing.assert_close(g_split, g_masked, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_split_window_layout_matches_the_pixel_by_pixel_reference():
    torch.manual_seed(0)
    module = ss.DoubleWindowAttention(dim=16, resolution=8, window=4, heads=4, layout="split")
    x = torch.randn(2, 8, 8, 16)
    torch.testing.assert_close(module(x), naive_double_attention(module, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(module(x), module(x, attention=ss.window_attention_ref), atol=1e-5, rtol=1e-5)


def test_an_unknown_window_layout_is_one_line():
    with pytest.raises(UserError, match="window_layout.*masked or split"):
        models.build("styleswin", {**TINY_ARCH, "window_layout": "flash"}, 32)


@torch.no_grad()
def test_full_attention_below_window_size_has_no_shift():
    torch.manual_seed(0)
    module = ss.DoubleWindowAttention(dim=16, resolution=4, window=8, heads=4, layout="masked")
    assert (module.window, module.shift) == (4, 0)
    assert module.shift_mask(torch.device("cpu")) is None
    x = torch.randn(1, 4, 4, 16)
    torch.testing.assert_close(module(x), naive_double_attention(module, x), atol=1e-5, rtol=1e-5)


def test_shift_mask_values():
    mask = ss.shift_attention_mask(16, 16, window=8, shift=4)
    assert mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, float("-inf")}
    assert (mask[0] == 0).all()  # top-left window: nothing wrapped
    # right column window: two regions of 8x4 tokens; bottom row: two of 4x8; last: four of 4x4
    assert [int(m.isinf().sum()) for m in mask] == [
        0,
        64 * 64 - 2 * 32 * 32,
        64 * 64 - 2 * 32 * 32,
        64 * 64 - 4 * 16 * 16,
    ]
    # last window, token (0,0) came from image pixel (12,12), token (7,7) from (3,3): blocked;
    # token (3,3) came from (15,15), on the same side of the border as (12,12): allowed
    assert mask[3, 0, 7 * 8 + 7] == float("-inf") and mask[3, 7 * 8 + 7, 0] == float("-inf")
    assert mask[3, 0, 3 * 8 + 3] == 0
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # every token may attend to itself


@torch.no_grad()
def test_mask_stops_attention_across_the_cyclic_shift_boundary():
    torch.manual_seed(0)
    module = ss.DoubleWindowAttention(dim=16, resolution=16, window=8, heads=4, layout="masked")
    x = torch.randn(1, 16, 16, 16)
    base = module(x)

    def output_at_origin_after_perturbing(row: int, col: int) -> torch.Tensor:
        x2 = x.clone()
        x2[0, row, col] += 10.0
        return module(x2)[0, 0, 0]

    # (15,15) lands in the same shifted window as (0,0) but on the other side of the wrap
    torch.testing.assert_close(output_at_origin_after_perturbing(15, 15), base[0, 0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(output_at_origin_after_perturbing(15, 0), base[0, 0, 0], atol=1e-6, rtol=0)
    # (3,3) shares the shifted window and the side of the border: it must matter
    assert not torch.allclose(output_at_origin_after_perturbing(3, 3), base[0, 0, 0], atol=1e-3)


def test_relative_position_index_table():
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(ss.relative_position_index(2), expected)
    index = ss.relative_position_index(8)
    assert index.shape == (64, 64) and int(index.min()) == 0 and int(index.max()) == 15 * 15 - 1
    assert (index.diagonal() == 7 * 15 + 7).all()  # zero offset is the table's centre
    assert torch.equal(index + index.T, torch.full_like(index, 2 * (7 * 15 + 7)))  # offset and its negative
    # the bias a block adds is that table row per head
    module = ss.DoubleWindowAttention(dim=16, resolution=8, window=4, heads=4, layout="masked")
    bias = module.relative_bias(1, module.rel_index)
    assert bias.shape == (2, 16, 16)
    assert torch.equal(bias[:, 0, 15], module.bias_tables[1][0])  # offset (-3,-3) -> row 0
    assert torch.equal(bias[:, 15, 0], module.bias_tables[1][48])  # offset (3,3) -> last row
    # a 2x4 piece of a 4-window (the split layout's edge strips) indexes the same table by the same offsets
    piece = ss.relative_position_index(4, 2, 4)
    assert piece.shape == (8, 8) and torch.equal(piece, ss.relative_position_index(4)[:8, :8])


def test_sinusoidal_positional_encoding_values():
    grid = ss.sinusoidal_grid(H=4, W=8, channels=16)
    assert grid.shape == (16, 4, 8)
    cols = torch.arange(1, 9, dtype=torch.float32).expand(4, 8)
    rows = torch.arange(1, 5, dtype=torch.float32)[:, None].expand(4, 8)
    torch.testing.assert_close(grid[0], torch.sin(cols))  # x half: sin at frequency 1
    torch.testing.assert_close(grid[4], torch.cos(cols))  # then the cosines
    torch.testing.assert_close(grid[3], torch.sin(cols * 1e-4))  # lowest frequency 10000^-1
    torch.testing.assert_close(grid[1], torch.sin(cols * 10000 ** (-1 / 3)))
    torch.testing.assert_close(grid[8], torch.sin(rows))  # y half
    torch.testing.assert_close(grid[12], torch.cos(rows))
    assert grid[0, 2, 3] == pytest.approx(math.sin(4.0), abs=1e-6)


def test_upsample_adds_the_encoding_with_a_learned_scale():
    torch.manual_seed(0)
    up = ss.BilinearUpsample(dim=16, out_dim=8, out_resolution=8)
    x = torch.randn(2, 4, 4, 16)
    assert up.pos_scale.item() == 0.0  # starts without the encoding, as in the official code
    plain = up(x)
    assert plain.shape == (2, 8, 8, 8)
    with torch.no_grad():
        up.pos_scale.fill_(0.5)
    torch.testing.assert_close(up(x) - plain, 0.5 * ss.sinusoidal_grid(8, 8, 8).permute(1, 2, 0).expand(2, -1, -1, -1))


def test_haar_transform_and_inverse():
    block = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    bands = ss.haar_dwt(block).flatten()
    # LL, LH (rows differ), HL (columns differ), HH for [[a, b], [c, d]] = [[1, 2], [3, 4]]
    torch.testing.assert_close(bands, torch.tensor([10.0, -4.0, -2.0, 0.0]) / 2)
    x = torch.randn(2, 3, 16, 16)
    coeffs = ss.haar_dwt(x)
    assert coeffs.shape == (2, 12, 8, 8)
    torch.testing.assert_close(ss.haar_idwt(coeffs), x)
    torch.testing.assert_close(coeffs.square().sum(), x.square().sum())  # orthonormal


@pytest.mark.parametrize("resolution", [32, 64])
def test_generator_and_discriminator_forward_backward(resolution):
    torch.manual_seed(0)
    G, D = models.build("styleswin", TINY_ARCH, resolution)
    assert (G.z_dim, G.w_dim, G.img_resolution, G.img_channels) == (32, 32, resolution, 3)
    z = torch.randn(4, G.z_dim)
    ws = G.mapping(z)
    num_stages = int(math.log2(resolution)) - 1
    assert ws.shape == (4, 2 * num_stages, 32) and G.w_avg.shape == (32,)
    images = G.synthesis(ws)
    assert images.shape == (4, 3, resolution, resolution) and torch.isfinite(images).all()
    logits = D(images)
    assert logits.shape == (4,)
    (logits.sum() + images.square().mean()).backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # R1 differentiates D twice (spectral norm, bias_act, Haar transforms included)
    real = torch.randn(4, 3, resolution, resolution, requires_grad=True)
    (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    grad.square().sum().backward()


@torch.no_grad()
def test_truncation_towards_w_avg():
    torch.manual_seed(0)
    G, _ = models.build("styleswin", TINY_ARCH, 32)
    G.eval()
    G.mapping.w_avg.normal_()
    images = G(torch.randn(3, G.z_dim), truncation_psi=0.0)
    torch.testing.assert_close(images, images[:1].expand_as(images))
    torch.testing.assert_close(images[:1], G.synthesis(G.w_avg.expand(1, G.synthesis.num_ws, -1)))


def test_registered_as_style_based():
    spec = models.get_spec("styleswin")
    assert spec.style_based and not spec.progressive


def test_trains_in_the_official_imagenet_normalised_space():
    """The official reals are ImageNet-normalised, so its G's raw output is too: ours leaves the
    synthesis network moved to [-1, 1] (IMAGENET.to_unit), and the spec tells the loss to move
    images back (from_unit) before D."""
    assert models.get_spec("styleswin").data_space == models.IMAGENET
    torch.manual_seed(0)
    G, _ = models.build("styleswin", TINY_ARCH, 32)
    ws = G.mapping(torch.randn(2, G.z_dim))
    captured = []
    G.synthesis.to_rgbs[-1].register_forward_hook(lambda module, args, out: captured.append(out))
    images = G.synthesis(ws)
    torch.testing.assert_close(images, models.IMAGENET.to_unit(captured[0]))
    torch.testing.assert_close(models.IMAGENET.from_unit(images), captured[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (6, 20)])
def test_spectral_norm_steps_like_the_official_hook(shape):
    """torch.nn.utils.spectral_norm (the official D's) steps v, then u, once per train-mode forward;
    ss.SpectralNorm must give the same weights and the same u, v after every forward, and use the
    stored vectors without a step in eval mode. (torch's parametrizations.spectral_norm steps u
    first and drifts away.)"""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(shape[1], shape[0], shape[2]) if len(shape) == 4 else torch.nn.Linear(shape[1], shape[0])
    ours = ss.spectral_norm(copy.deepcopy(layer))
    official = torch.nn.utils.spectral_norm(layer)
    ours_sn = ours.parametrizations.weight[0]
    with torch.no_grad():  # same weight (the copied layer), same starting vectors
        ours_sn._u.copy_(official.weight_u)
        ours_sn._v.copy_(official.weight_v)
    x = torch.randn(2, shape[1], 5, 5) if len(shape) == 4 else torch.randn(2, shape[1])
    for train in (True, True, True, False):
        official.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), official(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours_sn._u, official.weight_u, rtol=0, atol=0)
        torch.testing.assert_close(ours_sn._v, official.weight_v, rtol=0, atol=0)
    assert set(ours.state_dict()) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0._u",
        "parametrizations.weight.0._v",
    }


def test_sinusoidal_table_holds_the_official_float32_values():
    """The official SinusoidalPositionalEmbedding.get_embedding (microsoft/StyleSwin
    models/basic_layers.py), restated: float32 arithmetic throughout, position p in row p."""
    dim, positions = 64, torch.arange(1, 257)
    half = dim // 2
    emb = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    emb = torch.arange(257, dtype=torch.float).unsqueeze(1) * emb.unsqueeze(0)
    official = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)[1:]  # (256, dim): row p - 1 holds p
    assert torch.equal(ss.sinusoidal_table(positions, dim), official.T)


def test_params_yaml_sections_build():
    study = load_params(PARAMS, overrides={"profile": "study"})["models"]["styleswin"]
    read = set(re.findall(r"\barch\.(\w+)", inspect.getsource(ss.build)))
    assert set(study["arch"]) == read  # build reads every key of its arch section
    assert study["lr_g"] == pytest.approx(study["lr_d"] / 4)  # TTUR as in the paper
    demo = load_params(PARAMS, overrides={"profile": "demo"})
    G, D = models.build("styleswin", demo["models"]["styleswin"]["arch"], demo["data"]["resolution"])
    assert G(torch.randn(2, G.z_dim)).shape == (2, 3, demo["data"]["resolution"], demo["data"]["resolution"])
    with pytest.raises(UserError, match="window_size"):
        models.build("styleswin", {**TINY_ARCH, "window_size": 6}, 32)


def test_generator_size_matches_the_paper():
    """Zhang et al. 2022, Table 6: StyleSwin's generator at 1024x1024 has 40.86M parameters
    (arXiv 2112.10762; figure quoted by the authors' repository, github.com/microsoft/StyleSwin
    issue #39). Official 1024 configuration: G_channel_multiplier 1 (channel_base 16384),
    window 8, two blocks per stage, 32-channel heads (at least 4), MLP ratio 4, 8 mapping layers."""
    G = ss.StyleSwinGenerator(
        resolution=1024,
        z_dim=512,
        w_dim=512,
        mapping_layers=8,
        mapping_lr_multiplier=0.01,
        channel_base=16384,
        channel_max=512,
        window_size=8,
        window_layout="masked",
        blocks_per_stage=2,
        head_dim=32,
        min_heads=4,
        mlp_ratio=4.0,
    )
    assert models.count_params(G) == pytest.approx(40.86e6, rel=0.02)
