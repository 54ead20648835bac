"""StyleGAN3 (Karras et al. 2021, "Alias-Free Generative Adversarial Networks"), configs T
(translation equivariant) and R (translation and rotation equivariant), picked by `config`.

Components and where they live:
  - mapping network (2 FC layers, lr multiplier 0.01, w_avg for truncation; appendix F)
                                                      -> layers.MappingNetwork
  - style mixing while training (`loss.style_mixing_prob`; 0 in the official StyleGAN3 configs)
                                                      -> the training loop (facegan/training/loss.py)
  - Fourier-feature input: random frequencies inside a disc of radius `bandwidth` (the first
    cut-off), phases, sin(); an affine map from w gives a rotation angle and a translation that
    are applied to the features (sec. 3.1 / appendix F), followed by a learned 1x1 mix; the user
    `transform` buffer lets EQ-T / EQ-R translate or rotate the input -> SynthesisInput
  - cut-off / stop-band / sampling-rate schedule: cut-off f_c grows geometrically from
    `first_cutoff` (2) to R/2 over the first N - num_critical layers, stop-band f_t from 2**2.1 to
    f_c,N * 2**0.3; the last `num_critical` layers are critically sampled; sampling rate is the
    power of two >= 2 f_t; each layer's canvas adds `margin` pixels per side (sec. 3.2, fig. 4b,
    appendix F)                                       -> synthesis_schedule
  - alias-free layer: modulated conv (3x3 for T, 1x1 for R), magnitude-EMA normalisation of the
    input, then `filtered_lrelu` = bias, 2x upsampling with a Kaiser-windowed sinc, leaky ReLU,
    Kaiser low-pass and downsampling to the output rate (sec. 3.2) -> SynthesisLayer
  - Kaiser-windowed low-pass filters (separable), radially symmetric jinc-based filters for the
    down-sampling of non-critical layers in config R (sec. 3.3) -> design_lowpass_filter
  - final ToRGB (1x1 modulated conv without demodulation, no non-linearity), output scaled by
    `output_scale` 0.25                               -> SynthesisLayer(is_torgb=True), SynthesisNetwork
  - discriminator: the StyleGAN2 residual discriminator (sec. 4) -> layers.ResidualDiscriminator
  - mixed precision in layers whose sampling rate is in the top `num_fp16_res` octaves, with
    conv_clamp (official code)                         -> layers.block_precision
Config R doubles channel_base and channel_max (as the paper does); the arch section's values
are the T config's.

Training schedule (NVlabs stylegan3 train.py --cfg=stylegan3-t / -r with the 128px rows of
docs/configs.md: --gamma=0.5, batch 32, --glr 0.0025, --dlr 0.002; training/loss.py), run by
facegan/training/phases.py and loss.py: phases Gmain, Dmain (fakes, then reals), Dreg (R1 every 16 on the
augmented reals; no path length, no style mixing), G before D; ADA as StyleGAN2's (train.py's default
--aug=ada: target 0.6, every 4 steps, ada_kimg 500); x-flips (--mirror=1 of the FFHQ-U runs); every
layer's magnitude EMA (ToRGB included, decay 0.5 ** (batch / 20k)) and w_avg updated once per step in
the pass that makes D's fakes; config R blurs every image D sees (reals, fakes, and the reals of R1),
before ADA, with a Gaussian of `loss.blur_init_sigma` = 10 px fading to 0 over `blur_fade_kimg` =
batch * 200 / 32 kimg (set both when choosing config r; the loop warns when they are missing); fp16
in the layers of the top 4 octaves on CUDA. tests/test_golden.py runs whole steps of the loop for
configs T and R (the blur fade included) against NVlabs' loss, optimisers, EMA and ADA holding the
same weights and draws (golden: verification/golden_nvlabs.py).
Deviations kept: the same mixed-precision and data-parallel ones as models/stylegan2.py; the
magnitude EMA's decay is an arch param (`magnitude_ema_beta`), which the official code derives from
the batch size: a batch other than 32 needs its own value (params.yaml).
Checked against NVlabs' networks_stylegan3.py holding the same weights (configs T and R): the same
initial weights for a seed, filters, outputs, magnitude-EMA and w_avg updates and first- and
second-order gradients, to fp32 rounding (verification/nvlabs_networks.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan import settings
from facegan.errors import UserError
from facegan.ops import filtered_lrelu
from models import ModelSpec, layers, register

W_AVG_BETA = 0.998  # decay of the running mean of w (official networks_stylegan3.MappingNetwork w_avg_beta)

LRELU_UPSAMPLING = 2  # the non-linearity runs at twice the layer's sampling rate (sec. 3.2)
FILTER_SIZE = 6  # taps per unit of the up/down factor
FIRST_CUTOFF = 2.0  # f_c of the first layer (appendix F)
FIRST_STOPBAND = 2**2.1  # f_t of the first layer
LAST_STOPBAND_REL = 2**0.3  # f_t of the last layer relative to its f_c


# ----------------------------------------------------------------------------------------------
# Filter design (our own Kaiser / jinc design, checked against the paper's formulas)


def kaiser_attenuation(numtaps: int, width: float) -> float:
    """Stop-band attenuation (dB) of a Kaiser FIR of `numtaps` taps and transition width
    `width` (as a fraction of Nyquist), Kaiser's empirical formula."""
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def kaiser_beta(attenuation: float) -> float:
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation > 21:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    return 0.0


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False):
    """Kaiser-windowed low-pass with cut-off `cutoff` and transition band `width` at rate `fs`;
    separable 1-D sinc by default, a 2-D jinc (radially symmetric) when radial. None for 1 tap."""
    if numtaps == 1:
        return None
    beta = kaiser_beta(kaiser_attenuation(numtaps, width / (fs / 2)))
    window = np.kaiser(numtaps, beta)
    t = (np.arange(numtaps) - (numtaps - 1) / 2) / fs  # tap positions in continuous units
    if not radial:
        f = 2 * cutoff * np.sinc(2 * cutoff * t) * window
        return torch.as_tensor(f / f.sum(), dtype=torch.float32)
    r = np.hypot(t[None, :], t[:, None])
    arg = torch.as_tensor(2 * math.pi * cutoff * r)
    safe_r = np.where(r > 0, r, 1.0)
    jinc = torch.special.bessel_j1(arg).numpy() / (math.pi * safe_r)
    f = np.where(r > 0, jinc, cutoff) * np.outer(window, window)  # limit of the jinc at r = 0
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


def synthesis_schedule(
    resolution: int,
    num_layers: int,
    num_critical: int,
    first_cutoff: float,
    first_stopband: float,
    last_stopband_rel: float,
    margin: int,
    channel_base: int,
    channel_max: int,
    img_channels: int,
) -> dict[str, np.ndarray]:
    """Per layer 0..num_layers (the last is ToRGB): cut-off, stop-band, sampling rate, half-width
    of the transition band, canvas size and channels, as in the paper's fig. 4b."""
    last_cutoff = resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin * 2
    sizes[-2:] = resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return {
        "cutoffs": cutoffs,
        "stopbands": stopbands,
        "sampling_rates": sampling_rates,
        "half_widths": half_widths,
        "sizes": sizes.astype(int),
        "channels": channels.astype(int),
    }


# ----------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisInput(nn.Module):
    """Fourier features of `channels` random frequencies with |f| <= bandwidth, rotated and
    translated by an affine map of w (initialised to the identity), then a learned channel mix."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.channels, self.size, self.sampling_rate, self.bandwidth = channels, size, sampling_rate, bandwidth
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth  # spread inside the disc
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand([channels]) - 0.5)
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        # (cos, sin, tx, ty) of the rotation and translation; weight 0 and bias (1,0,0,0) = identity
        self.affine = layers.FullyConnectedLayer(w_dim, 4, weight_init=0.0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3))  # user transform, e.g. for EQ-T / EQ-R

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # unit rotation
        rot = torch.eye(3, device=w.device).repeat(n, 1, 1)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        shift = torch.eye(3, device=w.device).repeat(n, 1, 1)
        shift[:, 0, 2], shift[:, 1, 2] = -t[:, 2], -t[:, 3]
        transform = rot @ shift @ self.transform.unsqueeze(0)

        freqs = self.freqs.unsqueeze(0) @ transform[:, :2, :2]  # (N, C, 2)
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transform[:, :2, 2:]).squeeze(2)
        # fade out frequencies that the transform pushes beyond the band (rotation keeps |f|)
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        # sample positions of the canvas (size px covering size / sampling_rate units, centred)
        theta = torch.tensor(
            [[0.5 * self.size / self.sampling_rate, 0, 0], [0, 0.5 * self.size / self.sampling_rate, 0]],
            device=w.device,
        )
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)  # (1,H,W,2)
        x = grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)  # (N,H,W,1,C)
        x = x.squeeze(3) + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)


class SynthesisLayer(nn.Module):
    """Alias-free layer: magnitude-normalised modulated conv, then filtered leaky ReLU from the
    input sampling rate to the output one through 2x (or more) oversampling."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        use_low_precision: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: float,
        out_sampling_rate: float,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int,
        use_radial_filters: bool,
        conv_clamp: float | None,
        magnitude_ema_beta: float,
    ):
        super().__init__()
        self.is_torgb, self.use_low_precision = is_torgb, use_low_precision
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = in_size, out_size
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta

        self.affine = layers.FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else LRELU_UPSAMPLING)
        self.up_factor = int(np.rint(tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(tmp_sampling_rate / out_sampling_rate))
        self.up_taps = FILTER_SIZE * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.down_taps = FILTER_SIZE * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.register_buffer(
            "up_filter", design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, tmp_sampling_rate)
        )
        self.register_buffer(
            "down_filter",
            design_lowpass_filter(
                self.down_taps,
                out_cutoff,
                out_half_width * 2,
                tmp_sampling_rate,
                radial=use_radial_filters and not is_critically_sampled,
            ),
        )

        # padding of the upsampled signal so that the output has exactly out_size samples
        pad_total = (out_size - 1) * self.down_factor + 1
        pad_total -= (in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        self.padding = [int(pad_lo), int(pad_total - pad_lo)] * 2

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        if update_emas:  # every layer, ToRGB included, as the official layer does
            with torch.no_grad():
                magnitude = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()

        styles = self.affine(w.to(torch.float32))
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv_full(x, self.weight, styles, demodulate=not self.is_torgb, input_gain=input_gain)
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), 0.2)
        return filtered_lrelu(
            x,
            fu=self.up_filter,
            fd=self.down_filter,
            b=self.bias.to(x.dtype),
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=gain,
            slope=slope,
            clamp=self.conv_clamp,
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}@{self.in_size}, out={self.out_channels}@{self.out_size}, "
            f"up={self.up_factor}, down={self.down_factor}, torgb={self.is_torgb}"
        )


def modulated_conv_full(x, weight, styles, demodulate: bool, input_gain: torch.Tensor) -> torch.Tensor:
    """StyleGAN3's modulated convolution: weight and styles pre-normalised (the scale cancels in
    demodulation), demodulated, times the input gain 1/sqrt(EMA of E[x^2]); 'full' padding
    (k - 1) since each layer's canvas is cropped by filtered_lrelu's padding instead."""
    n, cin = x.shape[0], x.shape[1]
    cout, _, k, _ = weight.shape
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(n, 1, cin, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    w = w * input_gain.reshape(1, 1, 1, 1, 1)
    out = F.conv2d(
        x.reshape(1, n * cin, *x.shape[2:]), w.reshape(n * cout, cin, k, k).to(x.dtype), padding=k - 1, groups=n
    )
    return out.reshape(n, cout, *out.shape[2:])


class SynthesisNetwork(nn.Module):
    def __init__(
        self,
        w_dim: int,
        resolution: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        num_layers: int,
        num_critical: int,
        first_cutoff: float,
        first_stopband: float,
        last_stopband_rel: float,
        margin: int,
        output_scale: float,
        conv_kernel: int,
        use_radial_filters: bool,
        num_fp16_res: int,
        conv_clamp: float | None,
        magnitude_ema_beta: float,
    ):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, resolution, img_channels
        self.num_ws, self.output_scale = num_layers + 2, output_scale
        s = synthesis_schedule(
            resolution,
            num_layers,
            num_critical,
            first_cutoff,
            first_stopband,
            last_stopband_rel,
            margin,
            channel_base,
            channel_max,
            img_channels,
        )
        self.schedule = s
        self.input = SynthesisInput(
            w_dim, int(s["channels"][0]), int(s["sizes"][0]), float(s["sampling_rates"][0]), float(s["cutoffs"][0])
        )
        self.layer_list = nn.ModuleList()
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            self.layer_list.append(
                SynthesisLayer(
                    w_dim,
                    is_torgb=idx == num_layers,
                    is_critically_sampled=idx >= num_layers - num_critical,
                    use_low_precision=bool(s["sampling_rates"][idx] * 2**num_fp16_res > resolution),
                    in_channels=int(s["channels"][prev]),
                    out_channels=int(s["channels"][idx]),
                    in_size=int(s["sizes"][prev]),
                    out_size=int(s["sizes"][idx]),
                    in_sampling_rate=float(s["sampling_rates"][prev]),
                    out_sampling_rate=float(s["sampling_rates"][idx]),
                    in_cutoff=float(s["cutoffs"][prev]),
                    out_cutoff=float(s["cutoffs"][idx]),
                    in_half_width=float(s["half_widths"][prev]),
                    out_half_width=float(s["half_widths"][idx]),
                    conv_kernel=conv_kernel,
                    use_radial_filters=use_radial_filters,
                    conv_clamp=conv_clamp,
                    magnitude_ema_beta=magnitude_ema_beta,
                )
            )

    def forward(self, ws: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        """update_emas: update every layer's magnitude EMA (once per training step, on D's fakes)."""
        ws = ws.to(torch.float32).unbind(dim=1)
        with layers.block_precision(False, ws[0].device)[1]:
            x = self.input(ws[0])
        for layer, w in zip(self.layer_list, ws[1:]):
            dtype, ctx = layers.block_precision(layer.use_low_precision, w.device)
            with ctx:
                x = layer(x.to(dtype), w, update_emas)
        x = x.to(torch.float32) * self.output_scale
        return x


class Generator(nn.Module):
    def __init__(
        self,
        resolution: int,
        z_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_multiplier: float,
        img_channels: int = 3,
        **synthesis_kwargs,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = layers.MappingNetwork(
            z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta=W_AVG_BETA
        )

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi)
        return self.synthesis(ws)


def build(resolution: int, arch: settings.Stylegan3Arch, img_channels: int = 3) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.stylegan3.arch. config 'r' doubles the G widths (not D's) and uses 1x1
    convs and radial filters. conv_clamp 0 disables the clamp. magnitude_ema_beta: the official
    code uses 0.5 ** (batch_size / 20k), i.e. a half-life of 20k images."""
    if arch.num_layers <= arch.num_critical:
        raise UserError(
            f"models.stylegan3.arch: num_layers ({arch.num_layers}) must exceed num_critical ({arch.num_critical})"
        )
    layers.check_resolution("stylegan3", resolution, smallest=16)
    clamp = arch.conv_clamp if arch.conv_clamp > 0 else None
    scale = 2 if arch.config == "r" else 1
    G = Generator(
        resolution,
        arch.z_dim,
        arch.w_dim,
        arch.mapping_layers,
        arch.mapping_lr_multiplier,
        img_channels,
        channel_base=arch.channel_base * scale,
        channel_max=arch.channel_max * scale,
        num_layers=arch.num_layers,
        num_critical=arch.num_critical,
        first_cutoff=FIRST_CUTOFF,
        first_stopband=FIRST_STOPBAND,
        last_stopband_rel=LAST_STOPBAND_REL,
        margin=arch.margin,
        output_scale=arch.output_scale,
        conv_kernel=1 if arch.config == "r" else 3,
        use_radial_filters=arch.config == "r",
        num_fp16_res=arch.num_fp16_res,
        conv_clamp=clamp,
        magnitude_ema_beta=arch.magnitude_ema_beta,
    )
    D = layers.ResidualDiscriminator(
        resolution, img_channels, arch.channel_base, arch.channel_max, arch.mbstd_group_size, clamp, arch.num_fp16_res
    )
    return G, D


register(
    ModelSpec(
        name="stylegan3",
        paper="Karras et al. 2021, Alias-Free Generative Adversarial Networks",
        build=build,
        style_based=True,
        progressive=False,
        official_precision="fp16",  # NVlabs: fp16 in the num_fp16_res highest resolutions, clamped at conv_clamp
    )
)
