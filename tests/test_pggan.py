"""PGGAN (models/pggan.py): the fade-in of new blocks in G and D, and the paper's components."""

import pytest
import torch
import torch.nn.functional as F

import models
from facegan.errors import UserError

ARCH = {"z_dim": 16, "fmap_base": 128, "fmap_max": 16, "mbstd_group_size": 4}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return models.build("pggan", ARCH, 32)  # levels 0 (4x4) .. 3 (32x32)


def test_registered_as_progressive():
    spec = models.get_spec("pggan")
    assert spec.progressive and not spec.style_based


@pytest.mark.parametrize("level", [1, 2, 3])
def test_generator_fade_in_ends(nets, level):
    G, _ = nets
    z = torch.randn(4, 16)
    G.set_progress(level - 1, 1.0)
    lower = G(z)
    G.set_progress(level, 0.0)
    assert torch.equal(G(z), lower), "alpha=0: the lower level's image, upsampled"
    G.set_progress(level, 1.0)
    new = G(z)
    # the new block's own output: run the blocks by hand and take its toRGB
    x = G.norm(G.dense(G.norm(z)).view(4, -1, 4, 4))
    for lv in range(level + 1):
        x = G.blocks[lv](x)
    expected = F.interpolate(G.torgbs[level](x), size=32, mode="nearest")
    assert torch.allclose(new, expected, atol=1e-6)
    G.set_progress(level, 0.25)
    assert torch.allclose(G(z), lower.lerp(new, 0.25), atol=1e-6)
    assert new.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("level", [1, 3])
def test_discriminator_fade_in_ends(nets, level):
    _, D = nets
    img = torch.randn(4, 3, 32, 32)
    D.set_progress(level - 1, 1.0)
    lower = D(img)
    D.set_progress(level, 0.0)
    assert torch.allclose(D(img), lower, atol=1e-5), "alpha=0: the pooled image through the previous fromRGB"
    D.set_progress(level, 1.0)
    pooled = F.avg_pool2d(img, 32 // (4 * 2**level)) if level < 3 else img
    x = D.fromrgbs[level](pooled)
    for lv in range(level, 0, -1):
        x = D.blocks[lv](x)
    assert torch.allclose(D(img), D.epilogue(x), atol=1e-5), "alpha=1: the new block's fromRGB path alone"


def test_progress_survives_a_state_dict_round_trip(nets):
    G, _ = nets
    G.set_progress(2, 0.3)
    fresh, _ = models.build("pggan", ARCH, 32)
    fresh.load_state_dict(G.state_dict())
    assert (fresh.level, fresh.alpha) == (2, pytest.approx(0.3))
    with pytest.raises(UserError):
        fresh.set_progress(4, 1.0)


def test_paper_components_are_in_place(nets):
    G, D = nets
    G.set_progress(3, 1.0)
    # equalised learning rate: weights stored N(0, 1), scaled by 1/sqrt(fan_in) at run time
    conv = G.blocks[1].conv0
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.2)
    assert conv.weight_gain == pytest.approx(1 / (conv.in_channels * 9) ** 0.5)
    # pixelwise feature normalisation: every G block's features have unit mean square per pixel
    x = G.norm(G.dense(G.norm(torch.randn(2, 16))).view(2, -1, 4, 4))
    x = G.blocks[1](G.blocks[0](x))
    assert torch.allclose(x.square().mean(dim=1), torch.ones(2, 8, 8), atol=1e-4)
    # minibatch stddev: the 4x4 epilogue sees one extra feature map
    assert D.epilogue.mbstd is not None and D.epilogue.conv.in_channels == D.fromrgbs[0].out_channels + 1
