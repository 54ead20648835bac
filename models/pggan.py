"""PGGAN: Karras, Aila, Laine & Lehtinen, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation", ICLR 2018.

Components of the paper and where they live:
  - progressive growing from 4x4 to the target resolution (sec. 2): one block per resolution in G
    and D, the active level chosen by `set_progress(level, alpha)`; the training loop walks the
    per-resolution schedule                     -> Generator/Discriminator, facegan/training/progressive.py
  - smooth fade-in of a new block (sec. 2, fig. 2): G blends the new block's toRGB with the
    nearest-upsampled toRGB of the previous level, D blends the new block's fromRGB path with
    the average-pooled image's previous fromRGB; the reals are faded the same way
                                                -> Generator.forward, Discriminator.forward,
                                                   facegan/training/loop.py:prepare_reals
  - minibatch standard deviation, one extra feature map at 4x4 (sec. 3) -> layers.MinibatchStdDev
    inside layers.DiscriminatorEpilogue
  - equalised learning rate: N(0, 1) weights scaled by He's constant at run time (sec. 4.1)
                                                -> layers.Conv2dLayer, layers.FullyConnectedLayer
  - pixelwise feature normalisation after every conv of G, and on z (sec. 4.2) -> layers.PixelNorm
  - architecture of table 2: z -> dense 4x4 -> conv 3x3; per block nearest 2x up, two conv 3x3,
    leaky ReLU 0.2; D mirrors it with two conv 3x3 and 2x2 average pooling, then mbstd, conv 3x3,
    dense, dense to one logit; linear toRGB/fromRGB 1x1 -> Generator, Discriminator
  - WGAN-GP loss with epsilon drift 0.001 (sec. A.1), Adam lr 0.001 betas (0, 0.99), G EMA,
    Adam state reset at each new resolution     -> params.yaml models.pggan, facegan/training
Widths follow the official code: fmap_base / 2**(log2(res) - 1) capped at fmap_max (8192 / 512).
Leaky-ReLU layers carry their sqrt(2) He gain as an activation gain (layers.Conv2dLayer), which
equals the paper's weight-side gain up to the scale of the bias.
`level` and `alpha` also live in a buffer, so a snapshot loaded with load_state_dict comes back
at the level it was trained at.

Training schedule (tkarras/progressive_growing_of_gans config.py, preset-v2-1gpu, and train.py) run by
facegan/training: phases Dmain (WGAN-GP every step, drift 0.001) then Gmain, growing from 4x4 with
600 kimg per train and fade-in segment, a batch of 128/128/128/64/32/16 at 4..128 px and lr 0.001;
Adam's moments reset where a fade-in starts and where it ends (reset_opt_for_new_lod: whenever
floor(lod) or ceil(lod) changes, train.py:221); x-flips (the celebahq config's mirror_augment);
fp32 everywhere (the official code's default). tests/test_golden.py checks the schedule - resolution,
alpha, batch, lr and the resets - against the official TrainingSchedule run on its own
(verification/golden_schedules.py; the TensorFlow networks cannot run here). Deviations kept, with
their reason:
  - the schedule (lod, lr, batch) is evaluated every step, the official one every 4 minibatches
    (minibatch_repeats): resets and batch changes come up to 3 steps earlier, and alpha moves every
    step instead of every fourth;
  - the G average is a 10-kimg half-life in images, while the official code decays by 0.999 per
    step whatever the batch size (a half-life of 11 kimg at batch 16 and 89 kimg at batch 128):
    one rule for every model of the study, equal to the official one at the final 128 px level;
  - the loss on PyTorch autograd rather than TensorFlow's (WGAN-GP's mixing weights drawn by the loop).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan import settings
from facegan.errors import UserError
from models import ModelSpec, layers, register


def nf(resolution: int, fmap_base: int, fmap_max: int) -> int:
    return min(fmap_base // (resolution // 2), fmap_max)


def check_pggan_resolution(resolution: int) -> int:
    if resolution < 4 or resolution & (resolution - 1):
        raise UserError(f"pggan needs a power-of-two resolution >= 4, got {resolution}: fix data.resolution")
    return int(math.log2(resolution)) - 2


class Progress(nn.Module):
    """Holds (level, alpha) as plain attributes for speed and in a buffer for state_dict round trips."""

    def __init__(self, max_level: int):
        super().__init__()
        self.max_level = max_level
        self.register_buffer("progress", torch.tensor([float(max_level), 1.0]))
        self.level, self.alpha = max_level, 1.0
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_from_buffer())

    def _sync_from_buffer(self) -> None:
        self.level, self.alpha = int(self.progress[0].item()), float(self.progress[1].item())

    def set_progress(self, level: int, alpha: float) -> None:
        if not 0 <= level <= self.max_level:
            raise UserError(f"set_progress: level {level} is outside 0..{self.max_level} (4x4 .. final resolution)")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"set_progress: alpha {alpha} must be in [0, 1]")
        self.level, self.alpha = int(level), float(alpha)
        self.progress.copy_(torch.tensor([float(level), float(alpha)]))


class GeneratorBlock(nn.Module):
    """Nearest 2x up (none at 4x4), two equalised conv 3x3 + leaky ReLU, each followed by PixelNorm."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv0 = None if first else layers.Conv2dLayer(in_channels, out_channels, 3, activation="lrelu")
        self.conv1 = layers.Conv2dLayer(out_channels, out_channels, 3, activation="lrelu")
        self.norm = layers.PixelNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first:
            x = self.norm(self.conv0(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.norm(self.conv1(x))


class Generator(Progress):
    """G(z) -> (N, 3, R, R); below the final level the current level's image is nearest-upsampled."""

    def __init__(self, resolution: int, z_dim: int, fmap_base: int, fmap_max: int, img_channels: int = 3):
        super().__init__(check_pggan_resolution(resolution))
        self.z_dim, self.img_resolution, self.img_channels = z_dim, resolution, img_channels
        c4 = nf(4, fmap_base, fmap_max)
        self.norm = layers.PixelNorm()
        # table 2's "latent vector -> conv 4x4" on a 1x1 input is a dense layer to 4x4xC
        self.dense = layers.FullyConnectedLayer(z_dim, c4 * 16, activation="lrelu")
        self.blocks = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        for level in range(self.max_level + 1):
            res = 4 * 2**level
            c_out = nf(res, fmap_base, fmap_max)
            c_in = nf(res // 2, fmap_base, fmap_max) if level > 0 else c4
            self.blocks.append(GeneratorBlock(c_in, c_out, first=level == 0))
            self.torgbs.append(layers.Conv2dLayer(c_out, img_channels, 1))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        # no W space: truncation scales z towards its mean (0), as for DCGAN
        x = self.dense(self.norm(z.to(torch.float32) * truncation_psi))
        x = self.norm(x.view(z.shape[0], -1, 4, 4))
        img = None
        for level in range(self.level + 1):
            x = self.blocks[level](x)
            if level == self.level - 1 and self.alpha < 1:
                img = F.interpolate(self.torgbs[level](x), scale_factor=2, mode="nearest")
        new = self.torgbs[self.level](x)
        img = new if img is None else img.lerp(new.to(img.dtype), self.alpha)
        factor = self.img_resolution // img.shape[-1]
        return F.interpolate(img, scale_factor=factor, mode="nearest") if factor > 1 else img


class DiscriminatorBlock(nn.Module):
    """Two equalised conv 3x3 + leaky ReLU, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = layers.Conv2dLayer(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = layers.Conv2dLayer(in_channels, out_channels, 3, activation="lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(self.conv0(x)), 2)


class Discriminator(Progress):
    """D(img) -> (N, 1); the image is average-pooled to the current level's resolution first."""

    def __init__(self, resolution: int, fmap_base: int, fmap_max: int, mbstd_group_size: int, img_channels: int = 3):
        super().__init__(check_pggan_resolution(resolution))
        self.img_resolution, self.img_channels = resolution, img_channels
        self.fromrgbs = nn.ModuleList()
        self.blocks = nn.ModuleList()  # blocks[level] maps level -> level - 1 (none at 4x4)
        for level in range(self.max_level + 1):
            res = 4 * 2**level
            self.fromrgbs.append(layers.Conv2dLayer(img_channels, nf(res, fmap_base, fmap_max), 1, activation="lrelu"))
            self.blocks.append(
                nn.Identity()
                if level == 0
                else DiscriminatorBlock(nf(res, fmap_base, fmap_max), nf(res // 2, fmap_base, fmap_max))
            )
        self.epilogue = layers.DiscriminatorEpilogue(nf(4, fmap_base, fmap_max), 4, mbstd_group_size, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        res = 4 * 2**self.level
        if img.shape[-1] != res:
            img = F.avg_pool2d(img, img.shape[-1] // res)
        x = self.fromrgbs[self.level](img)
        for level in range(self.level, 0, -1):
            x = self.blocks[level](x)
            if level == self.level and self.alpha < 1:
                x = self.fromrgbs[level - 1](F.avg_pool2d(img, 2)).lerp(x, self.alpha)
        return self.epilogue(x)


def build(resolution: int, arch: settings.PgganArch) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.pggan.arch, both at the final level until set_progress says otherwise."""
    return (
        Generator(resolution, arch.z_dim, arch.fmap_base, arch.fmap_max),
        Discriminator(resolution, arch.fmap_base, arch.fmap_max, arch.mbstd_group_size),
    )


SPEC = register(
    ModelSpec(
        name="pggan", paper="Karras et al. 2018 (ICLR), Progressive Growing of GANs", build=build, progressive=True
    )
)
