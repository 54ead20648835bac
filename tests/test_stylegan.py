"""StyleGAN, StyleGAN2 and StyleGAN3 (models/stylegan*.py): the model contract, truncation, style
mixing, progressive growing, and parameter counts against the published figures."""

from __future__ import annotations

import pytest
import torch

import models
from facegan.errors import UserError
from models import count_params
from tests.helpers import study_arch

TINY = {
    "stylegan": dict(z_dim=32, w_dim=32, mapping_layers=2, fmap_base=128, fmap_max=16),
    "stylegan2": dict(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16),
    "stylegan3": dict(z_dim=32, w_dim=32, mapping_layers=2, channel_base=512, channel_max=16, num_layers=4),
}
NAMES = list(TINY)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(name, resolution=32, **overrides):
    return models.build(name, study_arch(name, **TINY[name], **overrides), resolution)


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_contract_flags(name):
    spec = models.get_spec(name)
    assert spec.style_based
    assert spec.progressive == (name == "stylegan")


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_32px(name):
    G, D = build(name)
    G.train(), D.train()
    assert (G.z_dim, G.img_resolution, G.img_channels) == (32, 32, 3)
    img = G(torch.randn(4, 32))
    assert img.shape == (4, 3, 32, 32) and torch.isfinite(img).all()
    logits = D(img)
    assert logits.shape in ((4,), (4, 1))
    logits.sum().backward()
    for net in (G, D):
        missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        if name == "stylegan":  # at the final level the lower levels' RGB converters are idle
            missing = [
                n for n in missing if not n.startswith(("synthesis.torgbs.", "fromrgbs.")) or n.split(".")[-2] == "3"
            ]
        assert not missing, f"{name}: no/invalid gradient for {missing[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_mapping_and_synthesis_compose_to_G(name):
    G, _ = build(name)
    G.eval()
    z = torch.randn(3, 32)
    ws = G.mapping(z)
    assert ws.shape == (3, G.synthesis.num_ws, G.w_dim) and G.w_avg.shape == (G.w_dim,)
    kwargs = {} if name == "stylegan3" else {"noise_mode": "const"}
    torch.testing.assert_close(G(z, **kwargs), G.synthesis(ws, **kwargs))


@pytest.mark.parametrize("name", NAMES)
def test_truncation_psi_zero_gives_the_mean_w_image(name):
    G, _ = build(name)
    for _ in range(5):  # move w_avg away from zero, as training does
        G.mapping(torch.randn(16, 32), update_emas=True)
    assert G.w_avg.abs().sum() > 0
    G.eval()
    kwargs = {} if name == "stylegan3" else {"noise_mode": "const"}
    a = G(torch.randn(2, 32), truncation_psi=0.0, **kwargs)
    b = G(torch.randn(2, 32), truncation_psi=0.0, **kwargs)
    mean_image = G.synthesis(G.w_avg.expand(2, G.synthesis.num_ws, -1), **kwargs)
    torch.testing.assert_close(a, mean_image)
    torch.testing.assert_close(b, mean_image)
    assert not torch.allclose(G(torch.randn(2, 32), **kwargs), mean_image)  # psi=1 differs


def synthesis_inputs(G, z, monkeypatch):
    seen = []
    forward = G.synthesis.forward

    def spy(ws, *args, **kwargs):
        seen.append(ws.detach().clone())
        return forward(ws, *args, **kwargs)

    monkeypatch.setattr(G.synthesis, "forward", spy)
    with torch.no_grad():
        G(z)
    return seen[-1]


@pytest.mark.parametrize("name", NAMES)
def test_the_generator_itself_never_mixes_styles_nor_updates_its_emas(name, monkeypatch):
    """Style mixing and the running statistics are the training loop's (facegan/training/phases.py),
    as in the official code: G(z) in training mode gives every layer the same w and leaves w_avg."""
    G, _ = build(name)
    G.train()
    ws = synthesis_inputs(G, torch.randn(4, 32), monkeypatch)
    assert (ws == ws[:, :1]).all()
    assert G.w_avg.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# Progressive growing (StyleGAN only)


def test_stylegan_fade_in_at_alpha_zero_is_the_upsampled_previous_level():
    G, D = build("stylegan")
    G.eval()
    z = torch.randn(3, 32)
    for level in (1, 2, 3):
        G.set_progress(level, 0.0)
        fading = G(z, noise_mode="const")
        G.set_progress(level - 1, 1.0)
        previous = G(z, noise_mode="const")
        torch.testing.assert_close(fading, previous)
        # the lower level is blocky: nearest-upsampled to 32x32
        block = 32 // (4 * 2 ** (level - 1))
        torch.testing.assert_close(
            previous, previous[..., ::block, ::block].repeat_interleave(block, 2).repeat_interleave(block, 3)
        )
    G.set_progress(3, 0.5)
    half = G(z, noise_mode="const")
    G.set_progress(3, 1.0)
    assert not torch.allclose(half, G(z, noise_mode="const"))

    img = torch.randn(4, 3, 32, 32)
    D.set_progress(2, 0.0)
    fading = D(img)
    D.set_progress(1, 1.0)
    torch.testing.assert_close(fading, D(img), atol=1e-5, rtol=1e-5)


def test_stylegan_set_progress_rejects_bad_levels():
    G, D = build("stylegan")
    with pytest.raises(UserError):
        G.set_progress(4, 1.0)  # 32x32 is level 3
    with pytest.raises(UserError):
        D.set_progress(1, 1.5)


def test_stylegan_trains_at_every_level():
    G, D = build("stylegan")
    for level, alpha in ((0, 1.0), (2, 0.3)):
        G.set_progress(level, alpha), D.set_progress(level, alpha)
        D(G(torch.randn(4, 32))).sum().backward()
        assert G.synthesis.blocks[level][1].conv.weight.grad is not None
        assert D.fromrgbs[level].weight.grad is not None


# ---------------------------------------------------------------------------------------------
# Parameter counts at 1024x1024 against the published figures (counting only, no forward).


def test_stylegan_parameter_counts_match_the_paper():
    # Karras et al. 2019, sec. 2: "the style-based generator has 26.2M trainable parameters";
    # its discriminator is PGGAN's (Karras et al. 2018, table 2: 23.1M at 1024x1024).
    G, D = models.build("stylegan", study_arch("stylegan", fmap_base=8192, fmap_max=512), 1024)
    assert count_params(G) == pytest.approx(26.2e6, rel=0.01)
    assert count_params(D) == pytest.approx(23.1e6, rel=0.01)
    assert count_params(G.mapping) == 8 * (512 * 512 + 512)


def test_stylegan2_config_f_parameter_counts_match_official():
    # Official stylegan2-ada-pytorch module summary at 1024x1024, channel_base 32768 (config F
    # widths), as printed by training/training_loop.py (print_module_summary) and reproduced in a
    # public StyleGAN2-ADA pipeline README: Generator total 28,794,124 with its 2-layer mapping
    # (cfg auto), Discriminator total 29,012,513; per layer synthesis.b4.conv1 2,622,465,
    # synthesis.b4.torgb 264,195, b1024.conv0 51,297, mapping.fc0 262,656. Config F has 8 mapping
    # layers: 28,794,124 + 6 * 262,656 = 30,370,060 (the paper's ~30M).
    arch = {"channel_base": 32768, "channel_max": 512}
    G2, D = models.build("stylegan2", study_arch("stylegan2", **arch, mapping_layers=2), 1024)
    assert count_params(G2) == 28_794_124
    assert count_params(D) == 29_012_513
    G, _ = models.build("stylegan2", study_arch("stylegan2", **arch, mapping_layers=8), 1024)
    assert count_params(G) == pytest.approx(30.37e6, rel=0.01)
    blocks = G.synthesis.blocks
    assert count_params(blocks[0].conv1) == 2_622_465 and count_params(blocks[0].torgb) == 264_195
    assert count_params(blocks[-1].conv0) == 51_297
    assert count_params(G.mapping.layers[0]) == 262_656


def test_stylegan3_r_layer_counts_match_official():
    # Official stylegan3 module summary for StyleGAN3-R at 1024x1024 (NVlabs/stylegan3 issue #49):
    # synthesis.input.affine 2,052, synthesis.input 1,048,576 (+ the affine), L0_36_1024.affine
    # 525,312, L0_36_1024 1,049,600, canvases 36, 36, 52, 52, 84 for L0..L4; mapping.fc0 262,656.
    G, D = models.build("stylegan3", study_arch("stylegan3", config="r", channel_base=32768, channel_max=512), 1024)
    syn = G.synthesis
    assert count_params(syn.input.affine) == 2_052
    assert count_params(syn.input) - count_params(syn.input.affine) == 1_048_576
    layer0 = syn.layer_list[0]
    assert count_params(layer0.affine) == 525_312
    assert count_params(layer0) - count_params(layer0.affine) == 1_049_600
    assert [layer.out_size for layer in syn.layer_list[:5]] == [36, 36, 52, 52, 84]
    assert count_params(G.mapping.layers[0]) == 262_656
    assert G.num_ws == 16
    assert count_params(D) == 29_012_513  # D is StyleGAN2's, un-doubled
