"""StyleGAN (Karras et al. 2019, "A Style-Based Generator Architecture for Generative
Adversarial Networks"), trained with progressive growing as in the paper.

Components and where they live:
  - mapping network z -> w: normalised z, 8 FC layers, lr multiplier 0.01 (sec. 2, appendix C)
                                                        -> layers.MappingNetwork
  - learned constant 4x4x512 input (sec. 2)             -> SynthesisNetwork.const
  - AdaIN: instance normalisation, then per-channel scale (1 + y_s) and bias y_b from a learned
    affine map of the layer's own w (per-layer styles, sec. 2) -> AdaIN
  - per-pixel noise inputs with learned per-channel strengths (sec. 2, fig. 1b) -> layers.NoiseInjection
  - 3x3 conv after 2x up-sampling, then the [1,2,1] blur (bilinear-like FIR, sec. 2 / appendix C)
                                                        -> StyleLayer
  - style-mixing regularisation (sec. 3.1, 90%), crossover drawn among the layers active at the
    current level as the official code does      -> the training loop (facegan/training/phases.py),
                                                        Generator.num_active_ws
  - truncation trick in W (sec. 3.3)                    -> layers.MappingNetwork
  - progressive growing (PGGAN): `set_progress(level, alpha)` on G and D; G fades the new block's
    RGB in over the nearest-upsampled RGB of the previous level, always returning full-resolution
    images; D average-pools its input to the current level and fades its new block in over the
    pooled image's fromRGB path                         -> Generator / Discriminator.set_progress
  - discriminator: PGGAN's, with the [1,2,1] blur before each down-sampling conv and minibatch
    stddev in the 4x4 epilogue                          -> Discriminator, layers.MinibatchStdDev
  - mixed precision for the `num_fp16_res` highest resolutions (off by default: the official
    StyleGAN ran in fp32)                                -> layers.block_precision
Widths: fmap_base / 2**(log2(res) - 1) capped at fmap_max (8192 / 512 in the paper).

Training schedule (NVlabs/stylegan train.py and training/training_loop.py, the 1-GPU minibatch
table), run by facegan/training: growing from 8x8 (lod_initial_resolution), 600 kimg per train
and fade-in segment, batch 128/128/128/64/32/16 at 4..128 px, lr 0.001 below 128 px and 0.0015 at
128 (G_lrate_dict), Adam (0, 0.99) with its moments reset where a fade-in starts and where it ends
(reset_opt_for_new_lod, training_loop.py:222), non-saturating loss with R1 gamma 10 every step (one
Dboth phase: no lazy regularisation in StyleGAN), D's step before G's, style mixing 0.9 with the
crossover drawn among the layers of the current level, G EMA with a 10 kimg half-life and no
ramp-up, x-flips (the FFHQ config's mirror_augment), fp32. tests/test_golden.py checks the schedule
- resolution, alpha, batch, lr and the resets - against the official training_schedule run on its
own (verification/golden_schedules.py; the TensorFlow networks cannot run here). Deviations kept:
the official schedule refreshes lod, lr and batch every 4 minibatches (minibatch_repeats) and this
one every step (resets and batch changes up to 3 steps earlier); conv layers are plain 3x3 after
nearest up-sampling rather than the official fused transposed conv at >= 128 px (the same function,
computed the long way).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan import settings
from facegan.errors import UserError
from facegan.ops import bias_act, filter2d, setup_filter
from models import ModelSpec, layers, register

BLUR_FILTER = (1, 2, 1)
W_AVG_BETA = 0.995  # decay of the running mean of w (official dlatent_avg_beta)
SQRT2 = math.sqrt(2)


def nf(resolution: int, fmap_base: int, fmap_max: int) -> int:
    """StyleGAN's width rule: fmap_base / 2**stage with stage = log2(res) - 1, at most fmap_max."""
    return min(fmap_base // (resolution // 2), fmap_max)


class AdaIN(nn.Module):
    """Instance norm, then x * (1 + y_s) + y_b with (y_s, y_b) = affine(w)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.style = layers.FullyConnectedLayer(w_dim, 2 * channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=[2, 3], keepdim=True)
        x = x * (x.square().mean(dim=[2, 3], keepdim=True) + 1e-8).rsqrt()
        scale, bias = self.style(w.to(torch.float32)).to(x.dtype).unsqueeze(2).unsqueeze(3).chunk(2, dim=1)
        return x * (scale + 1) + bias


class StyleLayer(nn.Module):
    """[nearest 2x up] -> 3x3 conv (He gain) -> [blur] -> noise -> bias + lrelu -> AdaIN.
    The first layer of the network has no conv (it takes the constant)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: bool = False,
        conv: bool = True,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.up = up
        self.conv = layers.Conv2dLayer(in_channels, out_channels, 3, bias=False) if conv else None
        self.noise = layers.NoiseInjection(resolution, per_channel=True, channels=out_channels)
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.adain = AdaIN(out_channels, w_dim)
        self.conv_clamp = conv_clamp
        self.register_buffer("blur", setup_filter(BLUR_FILTER) if up else None)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.up:
            # nearest up + 3x3 conv: the official code fuses the two into one transposed conv
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.conv is not None:
            x = self.conv(x, gain=SQRT2)
        if self.up:
            x = filter2d(x, self.blur)
        x = self.noise(x, noise_mode)
        x = bias_act(x, self.bias.to(x.dtype), act="lrelu", gain=1.0, clamp=self.conv_clamp)
        return self.adain(x, w)


class Generator(nn.Module):
    """Style-based generator with progressive growing. G(z) is always img_resolution; below the
    final level the image of the current level is nearest-upsampled to full size."""

    def __init__(
        self,
        resolution: int,
        z_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_multiplier: float,
        fmap_base: int,
        fmap_max: int,
        num_fp16_res: int,
        conv_clamp: float | None,
        img_channels: int = 3,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, resolution, img_channels
        self.max_level = int(math.log2(resolution)) - 2
        self.num_ws = 2 * (self.max_level + 1)
        self.synthesis = SynthesisNetwork(
            w_dim, resolution, img_channels, fmap_base, fmap_max, num_fp16_res, conv_clamp
        )
        self.mapping = layers.MappingNetwork(
            z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta=W_AVG_BETA
        )

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def set_progress(self, level: int, alpha: float) -> None:
        self.synthesis.set_progress(level, alpha)

    @property
    def num_active_ws(self) -> int:
        """ws the current level reads (two per level, the fading-in level included): style mixing
        draws its crossover among these (official: cur_layers = num_layers - 2 * int(lod))."""
        return 2 * (self.synthesis.level + 1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode)


def check_progress(level: int, alpha: float, max_level: int) -> None:
    if not 0 <= level <= max_level:
        raise UserError(f"set_progress: level {level} is outside 0..{max_level} (4x4 .. final resolution)")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"set_progress: alpha {alpha} must be in [0, 1]")


class SynthesisNetwork(nn.Module):
    def __init__(
        self,
        w_dim: int,
        resolution: int,
        img_channels: int,
        fmap_base: int,
        fmap_max: int,
        num_fp16_res: int,
        conv_clamp: float | None,
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, resolution, img_channels
        self.max_level = int(math.log2(resolution)) - 2
        self.num_ws = 2 * (self.max_level + 1)
        fp16_resolution = max(2 ** (self.max_level + 3 - num_fp16_res), 8)
        c4 = nf(4, fmap_base, fmap_max)
        self.const = nn.Parameter(torch.ones([c4, 4, 4]))
        self.blocks = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        self.low_precision = []
        for level in range(self.max_level + 1):
            res = 4 * 2**level
            c_in, c_out = nf(max(res // 2, 4), fmap_base, fmap_max), nf(res, fmap_base, fmap_max)
            first = (
                StyleLayer(c4, c_out, w_dim, res, conv=False, conv_clamp=conv_clamp)
                if level == 0
                else StyleLayer(c_in, c_out, w_dim, res, up=True, conv_clamp=conv_clamp)
            )
            self.blocks.append(nn.ModuleList([first, StyleLayer(c_out, c_out, w_dim, res, conv_clamp=conv_clamp)]))
            self.torgbs.append(layers.Conv2dLayer(c_out, img_channels, 1))
            self.low_precision.append(num_fp16_res > 0 and res >= fp16_resolution)
        self.level, self.alpha = self.max_level, 1.0

    def set_progress(self, level: int, alpha: float) -> None:
        check_progress(level, alpha, self.max_level)
        self.level, self.alpha = int(level), float(alpha)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", update_emas: bool = False) -> torch.Tensor:
        """update_emas: part of the style-based contract; this network keeps no running statistics."""
        n = ws.shape[0]
        x = self.const.unsqueeze(0).expand(n, -1, -1, -1)
        img = None
        for level in range(self.level + 1):
            dtype, ctx = layers.block_precision(self.low_precision[level], ws.device)
            with ctx:
                x = x.to(dtype)
                for i, layer in enumerate(self.blocks[level]):
                    x = layer(x, ws[:, 2 * level + i], noise_mode)
                if level == self.level - 1 and self.alpha < 1:
                    img = F.interpolate(self.torgbs[level](x).to(torch.float32), scale_factor=2, mode="nearest")
                if level == self.level:
                    new = self.torgbs[level](x).to(torch.float32)
                    img = new if img is None else img.lerp(new, self.alpha)
        factor = self.img_resolution // img.shape[-1]
        return F.interpolate(img, scale_factor=factor, mode="nearest") if factor > 1 else img


class DiscriminatorBlock(nn.Module):
    """conv 3x3 -> blur -> conv 3x3 with 2x down-sampling (conv + 2x2 average, fused in the
    official code), leaky ReLU after each conv."""

    def __init__(self, in_channels: int, out_channels: int, conv_clamp: float | None, use_low_precision: bool):
        super().__init__()
        self.use_low_precision = use_low_precision
        self.conv0 = layers.Conv2dLayer(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = layers.Conv2dLayer(in_channels, out_channels, 3, conv_clamp=conv_clamp)
        self.register_buffer("blur", setup_filter(BLUR_FILTER))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = filter2d(self.conv0(x), self.blur)
        x = F.avg_pool2d(self.conv1(x), 2)
        return bias_act(x, None, act="lrelu")


class Discriminator(nn.Module):
    def __init__(
        self,
        resolution: int,
        img_channels: int,
        fmap_base: int,
        fmap_max: int,
        mbstd_group_size: int,
        num_fp16_res: int,
        conv_clamp: float | None,
    ):
        super().__init__()
        self.img_resolution, self.img_channels = resolution, img_channels
        self.max_level = int(math.log2(resolution)) - 2
        fp16_resolution = max(2 ** (self.max_level + 3 - num_fp16_res), 8)
        self.fromrgbs = nn.ModuleList()
        self.blocks = nn.ModuleList()  # blocks[level] maps level -> level - 1 (none for level 0)
        for level in range(self.max_level + 1):
            res = 4 * 2**level
            self.fromrgbs.append(layers.Conv2dLayer(img_channels, nf(res, fmap_base, fmap_max), 1, activation="lrelu"))
            self.blocks.append(
                None
                if level == 0
                else DiscriminatorBlock(
                    nf(res, fmap_base, fmap_max),
                    nf(res // 2, fmap_base, fmap_max),
                    conv_clamp,
                    num_fp16_res > 0 and res >= fp16_resolution,
                )
            )
        self.epilogue = layers.DiscriminatorEpilogue(nf(4, fmap_base, fmap_max), 4, mbstd_group_size, 1)
        self.level, self.alpha = self.max_level, 1.0

    def set_progress(self, level: int, alpha: float) -> None:
        check_progress(level, alpha, self.max_level)
        self.level, self.alpha = int(level), float(alpha)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = img.to(torch.float32)
        res = 4 * 2**self.level
        if img.shape[-1] != res:
            img = F.avg_pool2d(img, img.shape[-1] // res)
        x = None
        for level in range(self.level, 0, -1):
            block = self.blocks[level]
            dtype, ctx = layers.block_precision(block.use_low_precision, img.device)
            with ctx:
                if x is None:
                    x = self.fromrgbs[level](img.to(dtype))
                x = block(x.to(dtype))
                if level == self.level and self.alpha < 1:
                    skip = self.fromrgbs[level - 1](F.avg_pool2d(img, 2).to(dtype))
                    x = skip.lerp(x, self.alpha)
        if x is None:
            x = self.fromrgbs[0](img)
        return self.epilogue(x.to(torch.float32))


def build(resolution: int, arch: settings.StyleganArch, img_channels: int = 3) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.stylegan.arch. conv_clamp 0 disables the clamp (the paper had none)."""
    layers.check_resolution("stylegan", resolution)
    clamp = arch.conv_clamp if arch.conv_clamp > 0 else None
    G = Generator(
        resolution,
        arch.z_dim,
        arch.w_dim,
        arch.mapping_layers,
        arch.mapping_lr_multiplier,
        arch.fmap_base,
        arch.fmap_max,
        num_fp16_res=arch.num_fp16_res,
        conv_clamp=clamp,
        img_channels=img_channels,
    )
    D = Discriminator(
        resolution, img_channels, arch.fmap_base, arch.fmap_max, arch.mbstd_group_size, arch.num_fp16_res, clamp
    )
    return G, D


register(
    ModelSpec(
        name="stylegan",
        paper="Karras et al. 2019, A Style-Based Generator Architecture for GANs",
        build=build,
        style_based=True,
        progressive=True,
    )
)
