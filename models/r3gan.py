"""R3GAN: Huang, Gokaslan, Kuleshov & Tompkin, "The GAN is dead; long live the GAN! A Modern Baseline
GAN", NeurIPS 2024 (official code: brownvc/R3GAN).

No mapping network, no styles, no noise inputs, no normalisation: a ResNet whose residual branches are
initialised so that the sum of all of them keeps the variance of the input (fix-up), trained with a
relativistic loss and zero-centred gradient penalties on reals and fakes (facegan/training/loss.py).
Components, each with its official source:
  - `msr_init`: weights ~ N(0, gain / sqrt(fan_in)), biases 0                     R3GAN/Networks.py MSRInitializer
  - `Convolution`: a bias-free conv whose weight is cast to the input's dtype      Networks.py Convolution
  - `BiasedActivation`: bias + leaky ReLU 0.2, gain 1 (facegan.ops.bias_act)        FusedOperators.py BiasedActivation
  - `ResidualBlock`: 1x1 expand (x expansion) -> act -> grouped kxk conv
    (cardinality groups) -> act -> 1x1 back, the last conv initialised to 0;
    the branch convs' init gain is lrelu's gain x L^(-1/(2*3-2)), L the number of
    blocks in the network (variance scaling)                                    Networks.py ResidualBlock
  - `Resampler`: interpolative 2x up/down-sampling with the [1, 3, 3, 1] low-pass
    (the [1, 2, 1] filter convolved with the box [1, 1], as an outer product)     Resamplers.py Interpolative*CUDA
  - `UpsampleLayer` / `DownsampleLayer`: a 1x1 conv where the width changes,
    before the up-sampling, after the down-sampling                               Networks.py Upsample/DownsampleLayer
  - `GenerativeBasis`: z -> linear -> times a learned 4x4 basis per channel          Networks.py GenerativeBasis
  - `DiscriminativeBasis`: a depthwise 4x4 conv to 1x1, then linear to one logit     Networks.py DiscriminativeBasis
  - `Generator`: basis stage at 4x4, then up-sampling stages, each with
    `blocks_per_stage` residual blocks; a 1x1 conv to RGB                          Networks.py Generator
  - `Discriminator`: 1x1 conv from RGB, stages of residual blocks then
    down-sampling, the basis stage at 4x4                                           Networks.py Discriminator
  - reduced precision: the generator's last `bf16_stages` stages and the
    discriminator's first ones run in bfloat16 (official FP16Stages [-1..-4])      training/networks.py

Widths and groups per stage come from two keys instead of the official per-preset lists:
width(res) = min(channel_base / res, channel_max) and cardinality = width x expansion / group_channels.
channel_base 24576, channel_max 768 and group_channels 16 reproduce both FFHQ presets of the official
train.py exactly (FFHQ-64: widths 768, 768, 768, 768, 384 with cardinalities 96, 96, 96, 96, 48;
FFHQ-256: ... 192, 96 with 24, 12), so the study's 128 px row is the FFHQ-256 preset without its
256 px stage (768 x 4, 384, 192; cardinalities 96 x 4, 48, 24). The training recipe (RpGAN + R1 + R2,
cosine schedules on images seen) is in params.yaml models.r3gan and facegan/training/cosine.py.

Deviations kept, with their reason:
  - reduced precision follows train.precision: `auto` runs the official bf16 stages on CUDA and fp32 on
    CPU, as every model of the study (bf16 on CPU is slower, not faster);
  - G's output leaves the network as fp32 (the official returns the last stage's bf16): the study's
    contract for G's images; the values are the same;
  - unconditional only (the FFHQ presets are unconditional): no class embedding.
tests/test_golden.py checks G, D, one D step and one G step against brownvc/R3GAN's own code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from facegan import settings
from facegan.errors import UserError
from facegan.ops import bias_act, downsample2d, upsample2d
from models import ModelSpec, layers, register

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2 / (1 + LRELU_SLOPE**2))  # the official BiasedActivation.Gain: He init for leaky ReLU
LINEAR_LAYERS_PER_BLOCK = 3
RESAMPLING_FILTER = (1, 2, 1)  # official ResamplingFilter


def msr_init(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Variance-preserving init: weight ~ N(0, gain / sqrt(fan_in)), bias 0 (fan_in of a grouped conv
    counts the channels of one group)."""
    fan_in = layer.weight.data.size(1) * layer.weight.data[0][0].numel()
    layer.weight.data.normal_(0, gain / math.sqrt(fan_in))
    if layer.bias is not None:
        layer.bias.data.zero_()
    return layer


def lowpass_kernel(taps: tuple[int, ...] = RESAMPLING_FILTER) -> torch.Tensor:
    """The 2-D interpolation kernel: taps convolved with the box [1, 1], outer product, sum 1."""
    row = np.convolve(taps, [1, 1]).reshape(1, -1)
    kernel = torch.tensor(row.T @ row, dtype=torch.float32)
    return kernel / kernel.sum()


class Convolution(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1, gain: float = 1.0):
        super().__init__()
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.layer = msr_init(conv, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight.to(x.dtype)
        return nn.functional.conv2d(x, weight, padding=self.layer.padding, groups=self.layer.groups)


class BiasedActivation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias.to(x.dtype), act="lrelu", alpha=LRELU_SLOPE, gain=1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, cardinality: int, expansion: int, kernel_size: int, variance_scaling: int):
        super().__init__()
        expanded = channels * expansion
        gain = LRELU_GAIN * variance_scaling ** (-1 / (2 * LINEAR_LAYERS_PER_BLOCK - 2))
        self.conv1 = Convolution(channels, expanded, 1, gain=gain)
        self.conv2 = Convolution(expanded, expanded, kernel_size, groups=cardinality, gain=gain)
        self.conv3 = Convolution(expanded, channels, 1, gain=0.0)  # the branch starts as the identity's zero
        self.act1 = BiasedActivation(expanded)
        self.act2 = BiasedActivation(expanded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = self.conv2(self.act1(y))
        y = self.conv3(self.act2(y))
        return x + y


class Resampler(nn.Module):
    """Interpolative 2x resampling with the low-pass kernel (upfirdn2d, as the official CUDA path)."""

    def __init__(self, up: bool):
        super().__init__()
        self.up = up
        self.register_buffer("kernel", lowpass_kernel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        return upsample2d(x, kernel) if self.up else downsample2d(x, kernel)


class UpsampleLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.resampler = Resampler(up=True)
        self.linear = Convolution(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x) if self.linear is not None else x
        return self.resampler(x)


class DownsampleLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.resampler = Resampler(up=False)
        self.linear = Convolution(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resampler(x)
        return self.linear(x) if self.linear is not None else x


class GenerativeBasis(nn.Module):
    def __init__(self, z_dim: int, channels: int):
        super().__init__()
        self.basis = nn.Parameter(torch.empty(channels, 4, 4).normal_(0, 1))
        self.linear = msr_init(nn.Linear(z_dim, channels, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.basis.view(1, -1, 4, 4) * self.linear(z).view(z.shape[0], -1, 1, 1)


class DiscriminativeBasis(nn.Module):
    def __init__(self, channels: int, out_features: int):
        super().__init__()
        self.basis = msr_init(nn.Conv2d(channels, channels, 4, groups=channels, bias=False))
        self.linear = msr_init(nn.Linear(channels, out_features, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.basis(x).view(x.shape[0], -1))


class Stage(nn.Module):
    """A transition layer and residual blocks (G: transition first; D: blocks first), run in bf16 when
    marked and the loop trains under reduced precision (models.layers.block_precision)."""

    def __init__(self, transition: nn.Module, blocks: list[ResidualBlock], transition_first: bool):
        super().__init__()
        self.layers = nn.ModuleList([transition, *blocks] if transition_first else [*blocks, transition])
        self.low_precision = False  # set by the network for its bf16 stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, context = layers.block_precision(self.low_precision, x.device)
        with context:
            x = x.to(dtype)
            for layer in self.layers:
                x = layer(x)
        return x


def residual_blocks(
    width: int, cardinality: int, arch: settings.R3ganArch, kernel_size: int, variance_scaling: int
) -> list[ResidualBlock]:
    """A stage's `blocks_per_stage` residual blocks (variance_scaling: the number of blocks in the network)."""
    return [
        ResidualBlock(width, cardinality, arch.expansion, kernel_size, variance_scaling)
        for _ in range(arch.blocks_per_stage)
    ]


def stage_widths(resolution: int, arch: settings.R3ganArch) -> list[tuple[int, int]]:
    """(width, cardinality) of each stage, 4x4 first."""
    out = []
    for level in range(int(math.log2(resolution)) - 1):
        width = min(arch.channel_base // (4 * 2**level), arch.channel_max)
        out.append((width, max(1, width * arch.expansion // arch.group_channels)))
    return out


class Generator(nn.Module):
    def __init__(self, resolution: int, arch: settings.R3ganArch, kernel_size: int = 3):
        super().__init__()
        stages = stage_widths(resolution, arch)
        scaling = arch.blocks_per_stage * len(stages)  # the number of residual blocks in G

        def blocks(width: int, cardinality: int) -> list[ResidualBlock]:
            return residual_blocks(width, cardinality, arch, kernel_size, scaling)

        first_width, _ = stages[0]
        main = [Stage(GenerativeBasis(arch.z_dim, first_width), blocks(*stages[0]), transition_first=True)]
        for (before, _), (width, cardinality) in zip(stages, stages[1:]):
            main.append(Stage(UpsampleLayer(before, width), blocks(width, cardinality), transition_first=True))
        for stage in main[len(main) - arch.bf16_stages :] if arch.bf16_stages else []:
            stage.low_precision = True
        self.stages = nn.ModuleList(main)
        self.to_rgb = Convolution(stages[-1][0], 3, 1)
        self.z_dim, self.img_resolution, self.img_channels = arch.z_dim, resolution, 3

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Images in [-1, 1] (roughly) from latents; R3GAN has no W, so there is nothing to truncate and
        `truncation_psi` must stay 1."""
        if truncation_psi != 1.0:
            raise ValueError("R3GAN has no mapping network to truncate: use truncation_psi=1")
        x = z
        for stage in self.stages:
            x = stage(x)
        return self.to_rgb(x).float()


class Discriminator(nn.Module):
    def __init__(self, resolution: int, arch: settings.R3ganArch, kernel_size: int = 3):
        super().__init__()
        stages = stage_widths(resolution, arch)[::-1]  # full resolution first
        scaling = arch.blocks_per_stage * len(stages)

        def blocks(width: int, cardinality: int) -> list[ResidualBlock]:
            return residual_blocks(width, cardinality, arch, kernel_size, scaling)

        main = [
            Stage(DownsampleLayer(width, after), blocks(width, cardinality), transition_first=False)
            for (width, cardinality), (after, _) in zip(stages, stages[1:])
        ]
        last_width, last_cardinality = stages[-1]
        main.append(Stage(DiscriminativeBasis(last_width, 1), blocks(last_width, last_cardinality), False))
        for stage in main[: arch.bf16_stages]:
            stage.low_precision = True
        self.from_rgb = Convolution(3, stages[0][0], 1)
        self.stages = nn.ModuleList(main)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype, _ = layers.block_precision(self.stages[0].low_precision, images.device)
        x = self.from_rgb(images.to(dtype))
        for stage in self.stages:
            x = stage(x)
        return x.view(x.shape[0]).float()


def build(resolution: int, arch: settings.R3ganArch) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.r3gan.arch (widths from channel_base/channel_max, groups from group_channels)."""
    layers.check_resolution("r3gan", resolution)
    stages = int(math.log2(resolution)) - 1
    if arch.bf16_stages > stages:
        raise UserError(
            f"models.r3gan.arch.bf16_stages = {arch.bf16_stages} but a {resolution}px R3GAN has {stages} stages: "
            f"use {stages - 1} or fewer (the official 32 px preset runs 3 of its 4 in bf16)"
        )
    return Generator(resolution, arch), Discriminator(resolution, arch)


register(
    ModelSpec(
        name="r3gan",
        paper="Huang et al. 2024, The GAN is dead; long live the GAN! A Modern Baseline GAN",
        build=build,
        style_based=False,
        progressive=False,
        official_precision="bf16",  # brownvc/R3GAN: bf16 in the last four G stages and the first four D stages
    )
)
