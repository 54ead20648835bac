"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
config F scaled by params: the generator with weight demodulation and skip outputs, and the
residual discriminator, without progressive growing.

Components and where they live:
  - mapping network z -> w (8 FC layers, lr multiplier 0.01, w_avg for truncation, sec. 2 of the
    StyleGAN paper)                                           -> layers.MappingNetwork
  - style-mixing regularisation while training (`loss.style_mixing_prob`, 0.9 in config F)
                                                              -> the training loop (facegan/training/loss.py)
  - learned constant 4x4 input                                -> SynthesisBlock.const
  - modulation / demodulation (sec. 2.2), up-sampling conv with the [1,3,3,1] FIR filter
                                                              -> layers.ModulatedConv2d, SynthesisLayer
  - per-pixel noise with a learned strength, bias and leaky ReLU after the demodulated conv (fig. 2d)
                                                              -> layers.NoiseInjection, SynthesisLayer
  - skip generator: tRGB at every resolution, summed after FIR up-sampling (fig. 7b, sec. 4.1)
                                                              -> layers.ToRGB, SynthesisBlock
  - residual discriminator with minibatch stddev (fig. 7c)    -> layers.ResidualDiscriminator
  - truncation trick (psi)                                    -> layers.MappingNetwork
  - mixed precision in the `num_fp16_res` highest resolutions with activations clamped to
    +-conv_clamp (StyleGAN2-ADA appendix)                     -> layers.block_precision
Training schedule (NVlabs stylegan3 repo, train.py --cfg=stylegan2 with the 128px row of
docs/configs.md: --map-depth=2 --glr=0.0025 --dlr=0.0025 --cbase=16384 --gamma=0.1024, batch 32;
training/loss.py, training_loop.py and augment.py), run by facegan/training from params.yaml
models.stylegan2: phases Gmain, Greg (path length, weight 2, every 4 steps on half the batch, through
style mixing; the penalty differentiates through this step's share of its target, as the official),
Dmain (fakes, then reals), Dreg (R1 every 16 steps on the augmented reals), each its own Adam step
with lr and betas rescaled by k/(k+1); style mixing 0.9 drawn as the official run_G draws it; ADA
(the bgc pipe on every image D sees, target 0.6, p updated every 4 steps, ada_kimg 500:
facegan/training/ada.py); x-flips (--mirror=1 of NVlabs' face runs); the running w average updated
once per step on D's fakes; G EMA with a 10 kimg half-life ramped up over 5% of the images seen;
fp16 in the 4 highest resolutions with activations clamped at 256 on CUDA (train.precision auto).
tests/test_golden.py runs 17 whole steps of the loop against NVlabs' loss, optimisers, EMA and ADA
holding the same weights and draws (golden: verification/golden_nvlabs.py).
Deviations kept, with their reason:
  - mixed precision: fp16 under a GradScaler; the official code runs fp16 without a loss scaler and
    replaces non-finite gradients by zero, while this loop skips a step whose scaled gradients
    overflowed and stops on a non-finite loss naming the last good checkpoint (a silent repair
    would hide a diverging run);
  - data parallel: the path-length target and ADA's sign statistic are averaged over the ranks
    (official: one target per GPU), so that N processes train exactly like one;
  - no `pl_no_weight_grad` (it only skips unused weight gradients on CUDA; the result is the same);
  - the minibatch-stddev group shrinks to a divisor of the batch where the official layer needs the
    batch to be a multiple of the group size.
Widths: channel_base / resolution capped at channel_max (config F: 32768 and 512 at 1024x1024).
Checked against NVlabs' networks (stylegan3 repo, training/networks_stylegan2.py) holding the same
weights: the same initial weights for a seed, outputs, random noise for a seed, w_avg updates,
logits and first- and second-order gradients, to fp32 rounding (verification/nvlabs_networks.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from facegan import settings
from facegan.ops import bias_act, setup_filter, upsample2d
from models import ModelSpec, layers, register

W_AVG_BETA = 0.998  # decay of the running mean of w (official networks_stylegan2.MappingNetwork w_avg_beta)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally up x2) -> noise -> bias + leaky ReLU, clamped."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        conv_clamp: float | None = None,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.conv = layers.ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up, resample_filter=resample_filter)
        self.noise = layers.NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.conv(x, w).to(x.dtype)
        x = self.noise(x, noise_mode)
        return bias_act(x, self.bias.to(x.dtype), act="lrelu", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const | up-conv) -> conv -> tRGB, img += tRGB."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None,
        use_low_precision: bool,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.resolution, self.use_low_precision = resolution, use_low_precision
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                conv_clamp=conv_clamp,
                resample_filter=resample_filter,
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = layers.ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 1 if self.conv0 is None else 2

    def forward(self, x, img, ws, noise_mode="random"):
        """ws: (N, num_conv + 1, w_dim); returns features and the running RGB image (fp32)."""
        dtype, ctx = layers.block_precision(self.use_low_precision, ws.device)
        with ctx:
            if self.conv0 is None:
                x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
                x = self.conv1(x, ws[:, 0], noise_mode)
            else:
                x = self.conv0(x.to(dtype), ws[:, 0], noise_mode)
                x = self.conv1(x, ws[:, 1], noise_mode)
            y = self.torgb(x, ws[:, self.num_conv]).to(torch.float32)
            img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image. num_ws = 2 * log2(R) - 2 (18 at 1024x1024)."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        num_fp16_res: int,
        conv_clamp: float | None,
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, resolution, img_channels
        log2 = int(math.log2(resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = layers.channels_for(res // 2, channel_base, channel_max) if res > 4 else 0
            out_ch = layers.channels_for(res, channel_base, channel_max)
            block = SynthesisBlock(
                in_ch,
                out_ch,
                w_dim,
                res,
                img_channels,
                conv_clamp,
                use_low_precision=num_fp16_res > 0 and res >= fp16_resolution,
            )
            self.blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last tRGB has its own w

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", update_emas: bool = False) -> torch.Tensor:
        """update_emas: part of the style-based contract; this network keeps no running statistics."""
        x = img = None
        w_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx : w_idx + block.num_conv + 1], noise_mode)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    def __init__(
        self,
        resolution: int,
        z_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_multiplier: float,
        channel_base: int,
        channel_max: int,
        num_fp16_res: int,
        conv_clamp: float | None,
        img_channels: int = 3,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, resolution, img_channels, channel_base, channel_max, num_fp16_res, conv_clamp
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = layers.MappingNetwork(
            z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta=W_AVG_BETA
        )

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode)


def build(resolution: int, arch: settings.Stylegan2Arch, img_channels: int = 3) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.stylegan2.arch. conv_clamp 0 disables the clamp."""
    layers.check_resolution("stylegan2", resolution)
    clamp = arch.conv_clamp if arch.conv_clamp > 0 else None
    G = Generator(
        resolution,
        arch.z_dim,
        arch.w_dim,
        arch.mapping_layers,
        arch.mapping_lr_multiplier,
        arch.channel_base,
        arch.channel_max,
        arch.num_fp16_res,
        clamp,
        img_channels,
    )
    D = layers.ResidualDiscriminator(
        resolution, img_channels, arch.channel_base, arch.channel_max, arch.mbstd_group_size, clamp, arch.num_fp16_res
    )
    return G, D


register(
    ModelSpec(
        name="stylegan2",
        paper="Karras et al. 2020, Analyzing and Improving the Image Quality of StyleGAN",
        build=build,
        style_based=True,
        progressive=False,
        official_precision="fp16",  # NVlabs: fp16 in the num_fp16_res highest resolutions, clamped at conv_clamp
    )
)
