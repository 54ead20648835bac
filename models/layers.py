"""Layers shared by the style-based GANs (StyleGAN, StyleGAN2, StyleGAN3, StyleSwin) and PGGAN.

Components and the papers they come from:
  - equalised learning rate: weights stored as N(0, 1) / lr_multiplier and scaled at run time by
    lr_multiplier / sqrt(fan_in) (Karras et al. 2018, "Progressive Growing of GANs", sec. 4.1)
    -> `FullyConnectedLayer`, `Conv2dLayer`
  - pixelwise feature normalisation (PGGAN sec. 4.2) -> `PixelNorm`, `normalize_2nd_moment`
  - mapping network z -> w, normalised z, N FC layers with lr multiplier 0.01, running mean of w
    for the truncation trick (Karras et al. 2019, "A Style-Based Generator Architecture", sec. 2
    and 3.3 / appendix B) -> `MappingNetwork` (style mixing is the training loop's, as in the official
    code: facegan/training/loss.py)
  - minibatch standard deviation (PGGAN sec. 3) -> `MinibatchStdDev`
  - weight modulation / demodulation, run as one grouped convolution over the batch (Karras et al.
    2020, "Analyzing and Improving the Image Quality of StyleGAN", sec. 2.2), FIR up-sampling
    -> `modulated_conv2d`, `ModulatedConv2d`; the per-layer RGB output -> `ToRGB`
  - per-pixel noise inputs with learned per-layer strength (StyleGAN sec. 2) -> `NoiseInjection`
  - residual discriminator (StyleGAN2 fig. 7c / appendix) -> `ResidualDiscriminatorBlock`,
    `DiscriminatorEpilogue`, `ResidualDiscriminator`
  - mixed precision as in the official code (StyleGAN2-ADA, Karras et al. 2020, appendix D.2):
    low precision only in the highest-resolution blocks with activations clamped to +-conv_clamp
    -> `block_precision`

All resampling and activation goes through facegan.ops (FIR `upfirdn2d` family, fused `bias_act`),
so every layer here runs the Triton fast path on CUDA and the PyTorch reference on CPU.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan.errors import UserError
from facegan.ops import bias_act, downsample2d, setup_filter, upfirdn2d, upsample2d

SQRT_HALF = math.sqrt(0.5)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) over `dim`): the pixel norm of PGGAN, and StyleGAN's z normalisation."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class PixelNorm(nn.Module):
    def __init__(self, dim: int = 1, eps: float = 1e-8):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_2nd_moment(x, self.dim, self.eps)


# ----------------------------------------------------------------------------------------------
# Mixed precision


def block_precision(use_low_precision: bool, device: torch.device):
    """(dtype, context) for one block. Low precision only when the training loop runs under
    autocast on the block's device (train.precision is not fp32: fp16/bf16 on CUDA, the bf16
    lever on CPU) and only for blocks the model marks (its `num_fp16_res` highest resolutions);
    that block runs in the autocast dtype with autocast switched off so its casts are explicit,
    as in the official code. Every other block runs in fp32, also with autocast off, so
    low-resolution layers (and the mapping, whose w_avg is fp32) keep full precision."""
    if not torch.is_autocast_enabled(device.type):
        return torch.float32, contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(device.type) if use_low_precision else torch.float32
    return dtype, torch.autocast(device.type, enabled=False)


# ----------------------------------------------------------------------------------------------
# Equalised learning rate layers


class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer: y = act(x @ (W * lr_mult / sqrt(in)).T + b * lr_mult).
    bias_init may be a scalar or a vector of length out_features (StyleGAN3's Fourier affine)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init=0.0,
        weight_init: float = 1.0,
    ):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        if bias:
            init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
            self.bias = nn.Parameter(torch.from_numpy(init.copy()) / lr_multiplier)
        else:
            self.bias = None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t()) if x.ndim == 2 else F.linear(x, w, b)
        x = F.linear(x, w)
        return bias_act(x, b, dim=x.ndim - 1, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Convolution with FIR up/down-sampling around it, sizes H*up/down for a 'same' padding.
    up=2: transposed conv (stride 2) then the FIR low-pass with gain 4 (zero insertion and the
    convolution commute, so this is upsample-filter-conv at a quarter of the cost);
    down=2: FIR low-pass then strided conv; otherwise a plain conv. w: (out, in/groups, k, k).
    As in NVlabs' code (conv2d_resample with flip_weight = up == 1), the up-sampling form is a true
    convolution with w (the transposed conv with w unflipped) and every other form a correlation
    (F.conv2d), so that official weights give official results without flipping a kernel."""
    k = w.shape[-1]
    if up == 2:
        # transposed conv of an HxW map gives 2H + k - 2 samples; the 4-tap filter trims k - 1
        cin_g, cout = w.shape[1], w.shape[0]
        wt = (
            w.reshape(groups, cout // groups, cin_g, k, k).transpose(1, 2).reshape(groups * cin_g, cout // groups, k, k)
        )
        x = F.conv_transpose2d(x, wt, stride=2, groups=groups)
        total = f.shape[-1] - k + 1
        return upfirdn2d(x, f, padding=[total // 2, total - total // 2, total // 2, total - total // 2], gain=4)
    if down == 2:
        if k == 1:
            return F.conv2d(downsample2d(x, f), w, groups=groups)
        # FIR on H + 2p - taps + 1 samples, then a k-tap stride-2 conv back to H/2
        ft = f.shape[-1]
        total = k - 2 + ft - 1
        x = upfirdn2d(x, f, padding=[total // 2, total - total // 2, total // 2, total - total // 2])
        return F.conv2d(x, w, stride=2, groups=groups)
    return F.conv2d(x, w, padding=padding, groups=groups)


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution with optional FIR up/down-sampling, fused bias + activation and
    a clamp of the output (conv_clamp * gain) that keeps fp16 activations finite."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp: float | None = None,
        lr_multiplier: float = 1.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp, self.padding = up, down, conv_clamp, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(resample_filter) if (up > 1 or down > 1) else None)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = conv2d_resample(x, w, self.resample_filter, self.up, self.down, self.padding)
        act_gain = bias_act_default_gain(self.activation) * gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.weight.shape[-1]}, up={self.up}, "
            f"down={self.down}, act={self.activation}"
        )


def bias_act_default_gain(activation: str) -> float:
    from facegan.ops.bias_act import ACTIVATIONS

    return ACTIVATIONS[activation].default_gain


# ----------------------------------------------------------------------------------------------
# Mapping network, truncation, style mixing


class MappingNetwork(nn.Module):
    """z (N, z_dim) -> ws (N, num_ws, w_dim): optional z normalisation, `num_layers` equalised FC
    layers with leaky ReLU at lr_multiplier (0.01 in StyleGAN/2/3), a running average of w
    (`w_avg`, decay w_avg_beta, updated when the caller passes update_emas) and the truncation trick
    w' = w_avg + psi (w - w_avg) on the first `truncation_cutoff` ws (all when None)."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int,
        lr_multiplier: float,
        w_avg_beta: float,
        layer_features: int | None = None,
        normalize_z: bool = True,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta, self.normalize_z = w_avg_beta, normalize_z
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        self.layers = nn.ModuleList(
            FullyConnectedLayer(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        with block_precision(False, z.device)[1]:  # the mapping always runs in fp32
            x = normalize_2nd_moment(z.to(torch.float32)) if self.normalize_z else z.to(torch.float32)
            for layer in self.layers:
                x = layer(x)
        if update_emas:  # once per training step, in the pass that makes D's fakes (official update_emas)
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x if truncation_psi == 1 else self.w_avg.lerp(x, truncation_psi)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = ws.clone()
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


# ----------------------------------------------------------------------------------------------
# StyleGAN2 modulated convolution, noise, ToRGB


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution: w'_ijk = s_i w_ijk, demodulated by 1/sqrt(sum w'^2) per
    output channel. fused=True builds one weight per sample and runs a grouped convolution over the
    batch (groups = N); fused=False scales the activations instead (same result; cheaper for large
    batches). weight: (out, in, k, k) with equalised-lr gain applied; styles: (N, in)."""
    n, cin, h, w_ = x.shape
    cout, _, k, _ = weight.shape
    if x.dtype in (torch.float16, torch.bfloat16) and demodulate:
        # pre-normalise so the products below stay inside the fp16 range (scale cancels in demod)
        weight = weight * (1 / math.sqrt(cin * k * k) / weight.flatten(1).abs().amax(dim=1).view(-1, 1, 1, 1))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    wmod = weight.unsqueeze(0) * styles.reshape(n, 1, cin, 1, 1)  # (N, out, in, k, k)
    dcoefs = (wmod.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # (N, out)
    padding = k // 2
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, cin, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
        return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1) if demodulate else x
    if demodulate:
        wmod = wmod * dcoefs.reshape(n, cout, 1, 1, 1)
    x = x.reshape(1, n * cin, h, w_)
    x = conv2d_resample(
        x, wmod.reshape(n * cout, cin, k, k).to(x.dtype), resample_filter, up=up, padding=padding, groups=n
    )
    return x.reshape(n, cout, *x.shape[2:])


class ModulatedConv2d(nn.Module):
    """Affine map w -> per-input-channel styles (bias init 1) + modulated (demodulated) conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: int = 1,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.demodulate = in_channels, out_channels, up, demodulate
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", setup_filter(resample_filter) if up > 1 else None)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        styles = self.affine(w)
        if not self.demodulate:  # ToRGB: the equalised-lr gain moves into the styles
            styles = styles * self.weight_gain
            weight = self.weight
        else:
            weight = self.weight * self.weight_gain
        fused = (not self.training) if fused is None else fused
        return modulated_conv2d(
            x,
            weight.to(torch.float32),
            styles.to(torch.float32),
            self.demodulate,
            self.up,
            self.resample_filter,
            fused=fused,
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.weight.shape[-1]}, up={self.up}, "
            f"demodulate={self.demodulate}"
        )


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise times a learned per-layer strength (init 0). noise_mode: 'random'
    (fresh noise per call), 'const' (a fixed buffer per layer, for reproducible images) or 'none'."""

    def __init__(self, resolution: int, per_channel: bool = False, channels: int = 1):
        super().__init__()
        self.resolution = resolution
        self.strength = nn.Parameter(torch.zeros([channels if per_channel else 1]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            noise = self.noise_const.expand(x.shape[0], 1, -1, -1)
        else:
            # drawn in fp32 whatever the block's precision, as NVlabs' SynthesisLayer draws it: the
            # same seed then gives the same noise (and leaves the generator in the same state)
            noise = torch.randn([x.shape[0], 1, x.shape[2], x.shape[3]], device=x.device)
        return x + (noise * self.strength.view(1, -1, 1, 1)).to(x.dtype)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation + bias, clamped (StyleGAN2's tRGB)."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros([img_channels]))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool | None = None) -> torch.Tensor:
        x = self.conv(x, w, fused=fused).to(x.dtype)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


# ----------------------------------------------------------------------------------------------
# Discriminator


class MinibatchStdDev(nn.Module):
    """PGGAN's minibatch standard deviation in StyleGAN2's form: the std over groups of
    `group_size` samples, averaged over features and pixels, split into `num_channels` groups of
    channels, appended as extra feature maps."""

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size else n
        if n % g:
            g = math.gcd(n, g)  # groups must tile the batch; falls to smaller groups for odd batches
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class ResidualDiscriminatorBlock(nn.Module):
    """StyleGAN2 residual D block: [fromRGB 1x1] -> conv 3x3 -> conv 3x3 down 2, plus a 1x1
    down-sampled skip without bias; both branches scaled by sqrt(1/2)."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        img_channels: int = 3,
        conv_clamp: float | None = None,
        resample_filter=(1, 3, 3, 1),
        use_low_precision: bool = False,
    ):
        super().__init__()
        self.use_low_precision = use_low_precision
        self.fromrgb = (
            Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
            if in_channels == 0
            else None
        )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            3,
            activation="lrelu",
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, ctx = block_precision(self.use_low_precision, x.device)
        with ctx:
            x = x.to(dtype)
            if self.fromrgb is not None:
                x = self.fromrgb(x)
            y = self.skip(x, gain=SQRT_HALF)
            x = self.conv1(self.conv0(x), gain=SQRT_HALF)
            return y + x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch stddev -> conv 3x3 -> FC -> FC to one logit."""

    def __init__(
        self,
        in_channels: int,
        resolution: int = 4,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.mbstd = MinibatchStdDev(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with block_precision(False, x.device)[1]:
            x = x.to(torch.float32)
            if self.mbstd is not None:
                x = self.mbstd(x)
            x = self.conv(x)
            return self.out(self.fc(x.flatten(1)))


def channels_for(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: channel_base / resolution, at most channel_max (StyleGAN2)."""
    return min(channel_base // resolution, channel_max)


class ResidualDiscriminator(nn.Module):
    """StyleGAN2's residual discriminator (also StyleGAN3's): residual blocks from `resolution`
    down to 4x4, then the minibatch-stddev epilogue. Widths channel_base / res capped at
    channel_max; the `num_fp16_res` highest resolutions run in low precision on CUDA."""

    def __init__(
        self,
        resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        mbstd_group_size: int,
        conv_clamp: float | None,
        num_fp16_res: int,
        mbstd_num_channels: int = 1,
        resample_filter=(1, 3, 3, 1),
    ):
        super().__init__()
        self.img_resolution, self.img_channels = resolution, img_channels
        log2 = int(math.log2(resolution))
        block_res = [2**i for i in range(log2, 2, -1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        for res in block_res:
            in_ch = channels_for(res, channel_base, channel_max) if res < resolution else 0
            tmp = channels_for(res, channel_base, channel_max)
            out = channels_for(res // 2, channel_base, channel_max)
            self.blocks.append(
                ResidualDiscriminatorBlock(
                    in_ch,
                    tmp,
                    out,
                    img_channels,
                    conv_clamp=conv_clamp,
                    resample_filter=resample_filter,
                    use_low_precision=num_fp16_res > 0 and res >= fp16_resolution,
                )
            )
        self.epilogue = DiscriminatorEpilogue(
            channels_for(4, channel_base, channel_max), 4, mbstd_group_size, mbstd_num_channels, conv_clamp
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x)


__all__ = [
    "PixelNorm",
    "normalize_2nd_moment",
    "block_precision",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "conv2d_resample",
    "MappingNetwork",
    "modulated_conv2d",
    "ModulatedConv2d",
    "NoiseInjection",
    "ToRGB",
    "MinibatchStdDev",
    "ResidualDiscriminatorBlock",
    "DiscriminatorEpilogue",
    "ResidualDiscriminator",
    "channels_for",
    "upsample2d",
    "downsample2d",
]


def check_resolution(name: str, resolution: int, smallest: int = 8) -> None:
    """A style-based model's one check on data.resolution: a power of two, at least `smallest`."""
    if resolution < smallest or resolution & (resolution - 1):
        raise UserError(f"{name}: resolution {resolution} must be a power of two >= {smallest}: set data.resolution")
