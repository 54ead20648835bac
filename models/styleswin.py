"""StyleSwin: Zhang, Gu, Zhang, Bao, Chen, Wen, Wang & Guo, "StyleSwin: Transformer-based GAN for
High-resolution Image Generation", CVPR 2022 (arXiv 2112.10762). Facts checked against the paper
and Microsoft's official implementation (github.com/microsoft/StyleSwin, models/generator.py,
models/discriminator.py, train_styleswin.py); the code here is our own. With the official
networks' weights copied in, G and D compute the official functions: verification/styleswin_networks.py
(float64: 1e-14 relative on synthesis, D logits, spectral-norm state and first- and second-order
gradients; float32: within 1e-6 on outputs).

Components of the paper and where they live:
  - style-based generator: StyleGAN2 mapping network (PixelNorm + 8 FC, lr multiplier 0.01) and a
    learned constant 4x4 input                               -> StyleSwinGenerator (models.layers)
  - Swin transformer blocks whose layer norms are replaced by style-modulated AdaIN, one latent
    per block, two blocks per resolution                     -> StyleSwinBlock, StyleAdaIN
  - double attention: half of the heads (and channels) attend within regular windows, the other
    half within shifted windows, in the same block           -> DoubleWindowAttention
  - window attention through torch's scaled_dot_product_attention; the shifted half masks
    tokens that the cyclic shift brought together from opposite borders (additive float mask
    added to the relative position bias; -inf where the official code uses -100, so masked
    weights are exactly 0)                                   -> window_attention, shift_attention_mask
  - arch.window_layout=split (ours, a speed option; off by default): the shifted half cut at the
    shifted window lines without the cyclic roll, so that no piece needs a mask; the same tokens
    attend to the same tokens with the same bias (tests/test_styleswin.py), in four attention
    calls, one per piece shape                               -> attend_shifted_split, SPLIT_GROUPS
  - local-global positional encoding: relative position bias inside windows (local) and a 2-D
    sinusoidal positional encoding added, with a learned scale, after each up-sampling (global;
    its table computed in float32 arithmetic as the official one is, so it holds the same values)
                                                             -> relative_position_index, sinusoidal_grid
  - bilinear up-sampling between stages (then LayerNorm + linear channel reduction)
                                                             -> BilinearUpsample
  - tRGB heads summed over resolutions (each stage's head reads its up-sampled output), the
    running RGB skip up-sampled with the [1,3,3,1] FIR filter. As in the official code the tRGB
    is a plain 1x1 projection, not a modulated conv: the paper's 40.86M generator parameters
    (Table 6) only add up without per-stage style affines there (tests/test_styleswin.py checks
    the count). It has the official's two biases in series (the conv's and its own)  -> ToRGB
  - the official data range: the official training normalises reals with torchvision's ImageNet
    Normalize, so its G's raw output is in those units; ours ends with IMAGENET.to_unit so that
    every consumer gets [-1, 1], the spec names data_space=IMAGENET, and the training loss moves
    reals and fakes back (from_unit) before D, which is the official D unchanged
                                                             -> StyleSwinSynthesis, SPEC (models.DataSpace)
  - wavelet discriminator (the paper's fix for blocking artifacts, after SWAGAN, Gal et al.
    2021): the image is split into Haar sub-bands, each scale's fromRGB reads the sub-bands of the image
    down-sampled in the pixel domain (inverse Haar -> FIR down-sampling -> Haar), added to a
    StyleGAN2-style conv trunk (two 3x3 convs per scale, the second one strided, no residual branch
    - the official discriminator has none), minibatch stddev, conv and two FC (the first with two
    biases in series, as the official nn.Linear + FusedLeakyReLU); spectral normalisation on every
    layer, as the official training commands use (--D_sn), with the power-iteration order of the
    torch.nn.utils.spectral_norm hook the official code uses (v, then u; one step per train-mode
    forward)                                                 -> WaveletDiscriminator, haar_dwt,
                                                                haar_idwt, SpectralNorm
  - losses and optimisers (non-saturating loss, R1 on reals every 16 steps, TTUR lr_g = lr_d / 4,
    Adam betas (0, 0.99), G EMA with a 10 kimg half-life)    -> params.yaml models.styleswin
  - the official CelebA-HQ 256 schedule (train_styleswin.py and its README command): D step first
    with its gradient norm clipped at 5, R1 as its own step every 16, then G (phase_order DG,
    grad_clip_d 5); bCR with weights 10/10 and StyleSwin's CR_DiffAug (flip, 1/8 translation,
    colour, half-size cutout, in the official ImageNet-normalised units); a linear lr decay to 0 over
    the last 37.5% of the run; no x-flips of the reals (--use_flip is off in the face commands); fp32
                                                             -> facegan/training/loss.py, bcr.py
  - R1's gamma: the CelebA-HQ 256 command's --r1 5, times (128/256)^2 = 1.25 at the study's 128 px.
    The penalty sums squared gradients over pixels, so the same strength per pixel at a quarter of
    the pixels needs a quarter of gamma (NVlabs' rule of thumb, stylegan3 docs/configs.md: gamma
    scales with the square of the resolution). It acts in the official units: the loss moves reals
    into ImageNet normalisation before D (models.IMAGENET), where --r1 5 was tuned; in [-1, 1] units
    the same gamma would be ~4.9x stronger
tests/test_golden.py runs whole iterations of the loop against the body of train_styleswin.py's
training loop (D with bCR and the clip, R1, G, accumulate) holding the same weights and draws
(golden: verification/golden_styleswin.py).
Deviations kept, with their reason:
  - the lr decay covers the last 37.5% of *this* budget (`lr_decay_kimg`, 3750 of 10,000 kimg):
    the official run decays from step 500k of 800k x 32 images (25.6M), longer than the study's
    budget, so its absolute start would never be reached;
  - when the lr decays, D keeps its lazy-R1 ratio 16/17 (the official decay writes the raw D lr
    and drops it, a 6% jump at the start of the decay that we take to be unintended);
  - G's EMA also copies buffers (the official accumulate() averages parameters only; StyleSwin's
    G has no buffers that change while training, so the results agree); its half-life is in images
    (10 kimg), where accumulate() hard-codes 0.5 ** (32 / 10k) per step: the same at the official
    total batch of 32;
  - G's Adam has no lazy-regularisation ratio: the official g_reg_every = 10^7 makes its lr and betas
    (1 - 1e-7) times the nominal ones;
  - the shift mask is -inf where the official one is -100: masked attention weights are exactly 0
    (and the split layout needs no mask at all); the two differ only if attention logits within a
    window spread by more than ~100, where the official mask lets weights of e^-100 through;
  - G keeps w_avg (a running mean of w, decay 0.998) for the truncation trick of the evaluation;
    the official G has none (its truncation takes the mean from the caller and is not used in
    training), so training is unaffected;
  - the Haar filters are exactly +-0.5; the official ones are products of float32 1/sqrt(2)s,
    +-0.49999997 (float32 rounding, 6e-8 relative);
  - G's image passes through IMAGENET.to_unit and the loss's from_unit before D sees it: the same
    image up to float32 rounding (~1e-7 relative).

Channels per resolution r are min(channel_max, channel_base / r): channel_base 32768 with
channel_max 512 is the official 256x256 configuration (G_channel_multiplier 2), 16384 the
1024x1024 one. Heads are max(channels / head_dim, min_heads), split evenly between the two halves.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan import settings
from facegan.errors import UserError
from facegan.ops import bias_act, downsample2d, setup_filter, upfirdn2d, upsample2d
from models import IMAGENET, ModelSpec, layers, register

W_AVG_BETA = 0.998  # running mean of w for the truncation trick (StyleGAN2's mapping, which StyleSwin reuses)

# ----------------------------------------------------------------------------------------------
# Windows, masks and positional encodings


def window_partition(x: torch.Tensor, window: int, window_w: int | None = None) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, window*window_w, C), windows of window x window_w
    (window_w defaults to window) in row-major order."""
    B, H, W, C = x.shape
    ww = window_w or window
    x = x.view(B, H // window, window, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (H // window) * (W // ww), window * ww, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int, window_w: int | None = None) -> torch.Tensor:
    """Inverse of window_partition: (B, num_windows, window*window_w, C) -> (B, H, W, C)."""
    B, C = windows.shape[0], windows.shape[-1]
    ww = window_w or window
    x = windows.view(B, H // window, W // ww, window, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def relative_position_index(window: int, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """(N, N) index into a ((2w-1)^2, heads) bias table for the offset between tokens i and j of a
    rows x cols piece of a window (the whole window by default: N = window**2)."""
    rows, cols = torch.meshgrid(torch.arange(rows or window), torch.arange(cols or window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + window - 1  # 0 .. 2w-2
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def shifted_window_regions(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, N) region id of every token of the cyclically shifted feature map.

    After rolling by -shift, the last window row/column holds tokens from both image borders;
    the region id tells them apart: tokens attend to each other only within one region.
    """

    def axis_regions(size: int) -> torch.Tensor:
        pos = torch.arange(size)
        return (pos >= size - window).long() + (pos >= size - shift).long()  # 0, 1 or 2

    regions = axis_regions(H)[:, None] * 3 + axis_regions(W)[None, :]
    return window_partition(regions[None, :, :, None], window)[0, :, :, 0]


def shift_attention_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, N, N) additive mask: 0 within a region, -inf across the shift boundary."""
    regions = shifted_window_regions(H, W, window, shift)
    same = regions[:, :, None] == regions[:, None, :]
    return torch.zeros(same.shape).masked_fill_(~same, float("-inf"))


# The shifted half without a mask (window_layout: split). Shifting windows by s = window/2 cuts the
# map at s, s + w, s + 2w, ... along each axis. The cyclic shift puts the two border strips (the
# first and last s rows or columns) into one window and masks attention between them; cut at the
# same lines without the roll, every piece attends only within itself, so no mask is needed. Along
# an axis the pieces are "interior" (size w, from s to size - s) or "edge" (size s, the first and
# the last s, concatenated so that one partition covers both). Four groups of equal-shaped pieces
# - (interior, interior), (edge, interior), (interior, edge), (edge, edge) - each go through one
# attention call with the relative position bias of their shape; the same tokens attend to the
# same tokens with the same bias as under the mask, so both layouts compute the same function.
SPLIT_GROUPS = (("interior", "interior"), ("edge", "interior"), ("interior", "edge"), ("edge", "edge"))


def _axis_part(x: torch.Tensor, dim: int, part: str, shift: int) -> torch.Tensor:
    size = x.shape[dim]
    if part == "interior":
        return x.narrow(dim, shift, size - 2 * shift)
    return torch.cat([x.narrow(dim, 0, shift), x.narrow(dim, size - shift, shift)], dim)


def _assemble_axis(interior: torch.Tensor, edge: torch.Tensor, dim: int, shift: int) -> torch.Tensor:
    """Inverse of _axis_part along `dim`: first edge strip, interior, last edge strip."""
    return torch.cat([edge.narrow(dim, 0, shift), interior, edge.narrow(dim, shift, shift)], dim)


def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(dim, len(positions)): sin(p * f_k) then cos(p * f_k), f_k = 10000^(-k / (dim/2 - 1)).

    The frequency spacing divides by dim/2 - 1 as the official code does (after the
    tensor2tensor variant), not by dim/2 as in "Attention is all you need". Computed in float32
    step by step as the official SinusoidalPositionalEmbedding does, so that the table holds the
    official values, rounding included (float64 rounded to float32 differs by up to 1.4e-5 at 256 px).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = positions.float()[None, :] * freqs[:, None]
    return torch.cat([angles.sin(), angles.cos()], 0)


def sinusoidal_grid(H: int, W: int, channels: int) -> torch.Tensor:
    """(channels, H, W) 2-D sinusoidal encoding: the first half encodes the column (x), the second
    the row (y), positions counted from 1 (Xu et al. 2021, "Positional Encoding as Spatial
    Inductive Bias in GANs", as used by StyleSwin)."""
    x_enc = sinusoidal_table(torch.arange(1, W + 1), channels // 2)  # (C/2, W)
    y_enc = sinusoidal_table(torch.arange(1, H + 1), channels // 2)  # (C/2, H)
    return torch.cat([x_enc[:, None, :].expand(-1, H, W), y_enc[:, :, None].expand(-1, H, W)], 0)


# ----------------------------------------------------------------------------------------------
# Attention


def window_attention(q, k, v, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention inside windows through F.scaled_dot_product_attention.

    q, k, v: (B, num_windows, heads, N, head_dim); bias: (heads, N, N) relative position bias;
    mask: (num_windows, N, N) additive shift mask or None. Scale 1/sqrt(head_dim).
    Returns (B, num_windows, heads, N, head_dim).
    """
    B, nW, heads, N, d = q.shape
    if mask is None:  # the bias broadcasts over batch and windows
        out = F.scaled_dot_product_attention(
            q.reshape(B * nW, heads, N, d),
            k.reshape(B * nW, heads, N, d),
            v.reshape(B * nW, heads, N, d),
            attn_mask=bias.to(q.dtype)[None],
        )
    else:  # windows folded into the head axis so that one (1, nW*heads, N, N) mask broadcasts over batch
        attn_mask = (mask[:, None] + bias[None]).to(q.dtype).reshape(1, nW * heads, N, N)
        out = F.scaled_dot_product_attention(
            q.reshape(B, nW * heads, N, d),
            k.reshape(B, nW * heads, N, d),
            v.reshape(B, nW * heads, N, d),
            attn_mask=attn_mask,
        )
    return out.reshape(B, nW, heads, N, d)


def window_attention_ref(q, k, v, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch reference of window_attention (same signature): explicit softmax."""
    scores = torch.einsum("bwhnd,bwhmd->bwhnm", q, k) / math.sqrt(q.shape[-1]) + bias[None, None]
    if mask is not None:
        scores = scores + mask[None, :, None]
    return torch.einsum("bwhnm,bwhmd->bwhnd", scores.softmax(-1), v)


class DoubleWindowAttention(nn.Module):
    """StyleSwin's double attention: one qkv projection; the first half of the channels (and heads)
    attends within regular windows, the second half within windows shifted by window/2; the two
    halves are concatenated and projected. Each half has its own relative position bias table.
    At resolutions not larger than the window, both halves attend over the whole map, unshifted."""

    def __init__(self, dim: int, resolution: int, window: int, heads: int, layout: str):
        super().__init__()
        if layout not in ("masked", "split"):
            raise UserError(f"models.styleswin.arch.window_layout = {layout!r}: use masked or split")
        if heads % 2 or dim % heads:
            raise UserError(
                f"styleswin: {dim} channels cannot be split into {heads} heads (an even number "
                f"dividing the channels): change head_dim/min_heads in models.styleswin.arch"
            )
        self.dim, self.resolution, self.heads = dim, resolution, heads
        self.window = min(window, resolution)
        self.shift = window // 2 if resolution > window else 0
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        table_size = (2 * self.window - 1) ** 2
        self.bias_tables = nn.ParameterList([nn.Parameter(torch.zeros(table_size, heads // 2)) for _ in range(2)])
        for table in self.bias_tables:
            nn.init.trunc_normal_(table, std=0.02)
        self.register_buffer("rel_index", relative_position_index(self.window), persistent=False)
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        self.layout = layout if self.shift else "masked"  # no shift: nothing to mask or split
        if self.layout == "split":  # the bias index of each piece shape: (edge or interior) x (edge or interior)
            sizes = {"interior": self.window, "edge": self.shift}
            for rows, cols in SPLIT_GROUPS:
                index = relative_position_index(self.window, sizes[rows], sizes[cols])
                self.register_buffer(f"rel_index_{rows}_{cols}", index, persistent=False)

    def relative_bias(self, half: int, index: torch.Tensor) -> torch.Tensor:
        """(heads/2, N, N) bias of one half for the token pairs of `index` (N, N)."""
        N = index.shape[0]
        return self.bias_tables[half][index.flatten()].view(N, N, -1).permute(2, 0, 1)

    def shift_mask(self, device: torch.device) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        key = (device.type, device.index)
        if key not in self._mask_cache:  # built on first use: at 1024 px it would be 268 MB per block
            self._mask_cache = {
                key: shift_attention_mask(self.resolution, self.resolution, self.window, self.shift).to(device)
            }
        return self._mask_cache[key]

    def attend(
        self,
        qkv: torch.Tensor,
        half: int,
        attention=window_attention,
        mask: torch.Tensor | None = None,
        piece: tuple[int, int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """qkv: (3, B, H, W, C/2) of one half -> (B, H, W, C/2) attended within windows, or within the
        pieces of piece = (rows, cols, relative position index) of the split layout."""
        _, B, H, W, C = qkv.shape
        heads = self.heads // 2
        rows, cols, index = piece if piece is not None else (self.window, self.window, self.rel_index)
        windows = window_partition(qkv.reshape(3 * B, H, W, C), rows, cols)  # (3B, nW, N, C)
        windows = windows.view(3, B, windows.shape[1], rows * cols, heads, C // heads).permute(0, 1, 2, 4, 3, 5)
        q, k, v = windows.unbind(0)  # (B, nW, heads, N, d)
        out = attention(q, k, v, self.relative_bias(half, index), mask)
        return window_reverse(out.permute(0, 1, 3, 2, 4).reshape(B, -1, rows * cols, C), rows, H, W, cols)

    def attend_shifted_split(self, qkv: torch.Tensor, attention=window_attention) -> torch.Tensor:
        """The shifted half cut into pieces that need no mask (see SPLIT_GROUPS); qkv not rolled."""
        sizes = {"interior": self.window, "edge": self.shift}
        out = {}
        for rows, cols in SPLIT_GROUPS:
            group = _axis_part(_axis_part(qkv, 2, rows, self.shift), 3, cols, self.shift)
            index = getattr(self, f"rel_index_{rows}_{cols}")
            out[rows, cols] = self.attend(group, 1, attention, piece=(sizes[rows], sizes[cols], index))
        by_rows = {
            rows: _assemble_axis(out[rows, "interior"], out[rows, "edge"], 2, self.shift) for rows in sizes
        }  # (B, rows of the group, W, C)
        return _assemble_axis(by_rows["interior"], by_rows["edge"], 1, self.shift)

    def forward(self, x: torch.Tensor, attention=window_attention) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.dim)).movedim(-2, 0)  # (3, B, H, W, C)
        half = self.dim // 2
        regular = self.attend(qkv[..., :half], 0, attention)
        shifted = qkv[..., half:]
        if self.layout == "split":
            shifted = self.attend_shifted_split(shifted, attention)
        elif self.shift:
            shifted = torch.roll(shifted, shifts=(-self.shift, -self.shift), dims=(2, 3))
            shifted = self.attend(shifted, 1, attention, mask=self.shift_mask(qkv.device))
            shifted = torch.roll(shifted, shifts=(self.shift, self.shift), dims=(1, 2))
        else:
            shifted = self.attend(shifted, 1, attention)
        return self.proj(torch.cat([regular, shifted], -1))


# ----------------------------------------------------------------------------------------------
# Generator


class StyleAdaIN(nn.Module):
    """AdaIN in place of a transformer layer norm: normalise every channel over the tokens
    (instance norm, eps 1e-5), then scale and shift by an affine map of the block's latent w."""

    def __init__(self, dim: int, w_dim: int):
        super().__init__()
        self.affine = layers.FullyConnectedLayer(w_dim, 2 * dim, bias_init=0.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C), w: (B, w_dim)."""
        gamma, beta = self.affine(w)[:, None, None, :].chunk(2, dim=-1)
        # statistics over thousands of tokens: at least fp32 (also under bf16 autocast; fp64 stays fp64)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = xf.mean(dim=(1, 2), keepdim=True)
        var = xf.var(dim=(1, 2), keepdim=True, unbiased=False)
        return (gamma * (xf - mean) * torch.rsqrt(var + 1e-5) + beta).to(x.dtype)


class StyleSwinBlock(nn.Module):
    """x + DoubleAttn(AdaIN(x, w)), then x + MLP(AdaIN(x, w)): a Swin block whose two layer norms
    are style-modulated AdaINs driven by the same latent."""

    def __init__(
        self, dim: int, resolution: int, window: int, heads: int, mlp_ratio: float, w_dim: int, window_layout: str
    ):
        super().__init__()
        self.norm1 = StyleAdaIN(dim, w_dim)
        self.attn = DoubleWindowAttention(dim, resolution, window, heads, window_layout)
        self.norm2 = StyleAdaIN(dim, w_dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, w))
        return x + self.mlp(self.norm2(x, w))


class BilinearUpsample(nn.Module):
    """2x bilinear up-sampling, LayerNorm, linear channel reduction, then the global half of the
    local-global positional encoding: a sinusoidal grid times a learned scalar (initialised to 0)."""

    def __init__(self, dim: int, out_dim: int, out_resolution: int):
        super().__init__()
        if out_dim % 4 or out_dim < 8:
            raise UserError(
                f"styleswin: the sinusoidal encoding needs a multiple of 4 channels (>= 8), got "
                f"{out_dim}: raise channel_max/channel_base in models.styleswin.arch"
            )
        self.norm = nn.LayerNorm(dim)
        self.reduction = nn.Linear(dim, out_dim, bias=False)
        self.pos_scale = nn.Parameter(torch.zeros([]))
        grid = sinusoidal_grid(out_resolution, out_resolution, out_dim).permute(1, 2, 0)  # (H, W, C)
        self.register_buffer("pos_grid", grid.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        x = self.reduction(self.norm(x.permute(0, 2, 3, 1)))
        return x + self.pos_scale * self.pos_grid.to(x.dtype)


class ToRGB(nn.Module):
    """1x1 projection to RGB added to the FIR-up-sampled RGB of the previous stage. Two biases in
    series, as in the official ToRGB (its 1x1 conv has a bias, and a second one is added after it):
    the function is the same as with one, but both are trained, so under Adam their sum moves up to
    twice as fast as a single bias would; kept so that training steps match the official ones."""

    def __init__(self, dim: int, img_channels: int, upsample_skip: bool):
        super().__init__()
        self.proj = nn.Linear(dim, img_channels)
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.upsample_skip = upsample_skip
        self.register_buffer("fir", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        rgb = (self.proj(x) + self.bias).permute(0, 3, 1, 2)
        if skip is None:
            return rgb
        return rgb + (upsample2d(skip, self.fir) if self.upsample_skip else skip)


class StyleSwinSynthesis(nn.Module):
    """Constant 4x4 input, then per resolution `blocks_per_stage` StyleSwin blocks (one w each);
    every stage but the last ends with BilinearUpsample. As in the official code each stage's tRGB
    reads its output after that up-sampling, so the last two heads both work at full resolution.
    The summed tRGB output is the official generator's image, in ImageNet-normalised units (the
    official reals are); it leaves the network moved to [-1, 1], IMAGENET.to_unit, for every
    consumer, and the training loss moves it back (from_unit) before D."""

    def __init__(
        self,
        resolution: int,
        w_dim: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        window_size: int,
        blocks_per_stage: int,
        head_dim: int,
        min_heads: int,
        mlp_ratio: float,
        window_layout: str,
    ):
        super().__init__()
        self.resolution = resolution
        stage_res = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        chans = [layers.channels_for(r, channel_base, channel_max) for r in stage_res]
        self.const = nn.Parameter(torch.randn(stage_res[0], stage_res[0], chans[0]))  # (H, W, C)
        self.stages = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for i, (res, dim) in enumerate(zip(stage_res, chans)):
            heads = max(dim // head_dim, min_heads)
            self.stages.append(
                nn.ModuleList(
                    [
                        StyleSwinBlock(dim, res, window_size, heads, mlp_ratio, w_dim, window_layout)
                        for _ in range(blocks_per_stage)
                    ]
                )
            )
            last = i == len(stage_res) - 1
            out_dim = dim if last else chans[i + 1]
            self.upsamples.append(nn.Identity() if last else BilinearUpsample(dim, out_dim, 2 * res))
            self.to_rgbs.append(ToRGB(out_dim, img_channels, upsample_skip=not last))
        self.num_ws = blocks_per_stage * len(stage_res)
        self.apply(init_transformer_weights)

    def forward(self, ws: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        """update_emas: part of the style-based contract; this network keeps no running statistics."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        ws_iter = iter(ws.unbind(1))
        rgb = None
        for blocks, upsample, to_rgb in zip(self.stages, self.upsamples, self.to_rgbs):
            for block in blocks:
                x = block(x, next(ws_iter))
            x = upsample(x)
            rgb = to_rgb(x, rgb)
        return IMAGENET.to_unit(rgb)


def init_transformer_weights(module: nn.Module) -> None:
    """Official initialisation: truncated normal (std 0.02) linear weights, zero biases, LayerNorm
    at identity; the tRGB projection (a 1x1 conv there) Xavier-normal with gain 0.02 (module.apply
    visits ToRGB after its Linear, so this wins). The equalised-lr style affines keep their own
    N(0, 1) init."""
    if isinstance(module, ToRGB):
        nn.init.xavier_normal_(module.proj.weight, gain=0.02)
        nn.init.zeros_(module.proj.bias)
    elif isinstance(module, nn.Linear) and not isinstance(module, layers.FullyConnectedLayer):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class StyleSwinGenerator(nn.Module):
    """mapping (z -> w, StyleGAN2's network) + StyleSwinSynthesis. One w per transformer block; the
    official model feeds the same w to all of them (no style mixing), and so does forward()."""

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
        self.synthesis = StyleSwinSynthesis(resolution, w_dim, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = layers.MappingNetwork(
            z_dim=z_dim,
            w_dim=w_dim,
            num_ws=self.num_ws,
            num_layers=mapping_layers,
            lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=W_AVG_BETA,
        )

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi))


# ----------------------------------------------------------------------------------------------
# Wavelet discriminator


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D Haar transform: (N, C, H, W) -> (N, 4C, H/2, W/2) as [LL, LH, HL, HH]
    (each band C channels). On a 2x2 block [[a, b], [c, d]]: LL = (a+b+c+d)/2,
    LH = (a+b-c-d)/2 (rows differ), HL = (a-b+c-d)/2 (columns differ), HH = (a-b-c+d)/2."""
    a, b = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]
    c, d = x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    return torch.cat([a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d], 1) * 0.5


def haar_idwt(bands: torch.Tensor) -> torch.Tensor:
    """Inverse of haar_dwt: (N, 4C, H, W) -> (N, C, 2H, 2W)."""
    ll, lh, hl, hh = bands.chunk(4, 1)
    a, b = ll + lh + hl + hh, ll + lh - hl - hh
    c, d = ll - lh + hl - hh, ll - lh - hl + hh
    top = torch.stack([a, b], -1).flatten(-2)  # interleave columns
    bottom = torch.stack([c, d], -1).flatten(-2)
    return torch.stack([top, bottom], -2).flatten(-3, -2) * 0.5  # interleave rows


class SpectralNorm(nn.Module):
    """Parametrization W -> W / sigma, sigma estimated by one power-iteration step per forward in
    training mode, exactly as torch.nn.utils.spectral_norm (the hook the official discriminator
    uses) does: v = normalize(W^T u) first, then u = normalize(W v), sigma = u . W v. torch's newer
    parametrizations.spectral_norm steps u before v, so from the same u, v its sigma and its next
    u, v differ from the official ones (a randomised 512-channel conv's output by 1.4% after one
    step). As in the official hook, u and v start as random unit vectors, without warm-up steps."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        self.eps = eps
        rows = weight.shape[0]
        self.register_buffer("_u", F.normalize(weight.new_empty(rows).normal_(0, 1), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(weight.new_empty(weight[0].numel()).normal_(0, 1), dim=0, eps=eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            with torch.no_grad():  # updated in place: the buffers are the state the next forward continues
                self._v.copy_(F.normalize(torch.mv(matrix.t(), self._u), dim=0, eps=self.eps))
                self._u.copy_(F.normalize(torch.mv(matrix, self._v), dim=0, eps=self.eps))
        # clones, so that a backward through an earlier forward does not see the in-place updates
        u, v = self._u.clone(), self._v.clone()
        return weight / torch.dot(u, torch.mv(matrix, v))


def spectral_norm(module: nn.Module) -> nn.Module:
    """`module` with its weight spectrally normalised by SpectralNorm (state_dict keys as torch's
    parametrizations.spectral_norm: parametrizations.weight.original, ...weight.0._u, ._v).
    unsafe=True skips the check forward at registration, which would take a power-iteration step."""
    parametrization = SpectralNorm(module.weight.detach())
    return nn.utils.parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)


def spectral_weight(module: nn.Module, device_type: str) -> torch.Tensor:
    """A spectrally normalised module's weight, computed with autocast off: the power iteration
    updates its fp32 vectors in place. The op that uses the weight is still autocast."""
    with torch.autocast(device_type, enabled=False):
        return module.weight


class SpectralConvLayer(nn.Module):
    """Spectrally normalised conv (no equalised lr, as in the official SN discriminator), optional
    [1,3,3,1] FIR low-pass before a stride-2 conv, then bias + leaky ReLU(0.2) * sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, down: bool = False):
        super().__init__()
        self.down = down
        conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=2 if down else 1, padding=0 if down else kernel // 2, bias=False
        )
        self.conv = spectral_norm(conv)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.pad = (4 - 2 + kernel - 1) // 2  # FIR taps - stride + kernel - 1, split evenly
        self.register_buffer("fir", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = upfirdn2d(x, self.fir, padding=self.pad)
        x = F.conv2d(x, spectral_weight(self.conv, x.device.type), stride=self.conv.stride, padding=self.conv.padding)
        return bias_act(x, self.bias.to(x.dtype), act="lrelu")


class WaveletFromRGB(nn.Module):
    """Reads the Haar sub-bands of the image at this scale: after the first scale the previous
    scale's sub-bands are inverted to pixels, FIR-down-sampled and transformed again. Returns the
    sub-bands (for the next scale) and the features (1x1 conv) plus the trunk's features."""

    def __init__(self, img_channels: int, out_channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = SpectralConvLayer(4 * img_channels, out_channels, 1)
        self.register_buffer("fir", setup_filter([1, 3, 3, 1]), persistent=False)

    def forward(self, bands: torch.Tensor, features: torch.Tensor | None):
        if self.down:
            bands = haar_dwt(downsample2d(haar_idwt(bands), self.fir))
        out = self.conv(bands)
        return bands, out if features is None else out + features


class WaveletDiscriminator(nn.Module):
    """Haar sub-bands of the image (half resolution) feed every scale through WaveletFromRGB; the
    trunk has two 3x3 convs per scale (the second strided) down to 4x4, then minibatch stddev,
    a 3x3 conv and two linear layers. Widths follow the official code: the trunk leaves scale r
    with min(channel_max, channel_base / (r/2)) channels, and the first scale (resolution/2)
    starts at the width of `resolution`."""

    def __init__(
        self, resolution: int, channel_base: int, channel_max: int, img_channels: int = 3, mbstd_group_size: int = 4
    ):
        super().__init__()
        width = lambda r: layers.channels_for(r, channel_base, channel_max)  # noqa: E731
        scales = [2**i for i in range(int(math.log2(resolution)) - 1, 2, -1)]  # resolution/2 ... 8
        self.from_rgbs = nn.ModuleList()
        self.convs = nn.ModuleList()
        for i, r in enumerate(scales):
            c_in = width(2 * r) if i == 0 else width(r)
            self.from_rgbs.append(WaveletFromRGB(img_channels, c_in, down=i > 0))
            self.convs.append(
                nn.Sequential(SpectralConvLayer(c_in, c_in, 3), SpectralConvLayer(c_in, width(r // 2), 3, down=True))
            )
        self.from_rgb_4 = WaveletFromRGB(img_channels, width(4), down=True)
        self.mbstd = layers.MinibatchStdDev(group_size=mbstd_group_size, num_channels=1)
        self.final_conv = SpectralConvLayer(width(4) + 1, width(4), 3)
        # Two biases in series as in the official final_linear (nn.Linear's own, then FusedLeakyReLU's):
        # the same function as one bias, but both train, so Adam moves their sum up to twice as fast
        self.fc = spectral_norm(nn.Linear(width(4) * 16, width(4)))
        self.fc_bias = nn.Parameter(torch.zeros(width(4)))
        self.out = spectral_norm(nn.Linear(width(4), 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bands, x = haar_dwt(images), None
        for from_rgb, conv in zip(self.from_rgbs, self.convs):
            bands, x = from_rgb(bands, x)
            x = conv(x)
        _, x = self.from_rgb_4(bands, x)
        x = self.final_conv(self.mbstd(x))
        device = x.device.type
        x = F.linear(x.flatten(1), spectral_weight(self.fc, device), self.fc.bias)
        x = bias_act(x, self.fc_bias.to(x.dtype), act="lrelu")
        return F.linear(x, spectral_weight(self.out, device), self.out.bias).flatten()


# ----------------------------------------------------------------------------------------------


def build(resolution: int, arch: settings.StyleswinArch) -> tuple[nn.Module, nn.Module]:
    """(G, D) from models.styleswin.arch; see the module docstring for what each key sizes."""
    if resolution < 16 or resolution & (resolution - 1):
        raise UserError(f"styleswin needs a power-of-two resolution >= 16, got {resolution}: change data.resolution")
    G = StyleSwinGenerator(
        resolution,
        arch.z_dim,
        arch.w_dim,
        arch.mapping_layers,
        arch.mapping_lr_multiplier,
        channel_base=arch.g_channel_base,
        channel_max=arch.channel_max,
        window_size=arch.window_size,
        window_layout=arch.window_layout,
        blocks_per_stage=arch.blocks_per_stage,
        head_dim=arch.head_dim,
        min_heads=arch.min_heads,
        mlp_ratio=arch.mlp_ratio,
    )
    D = WaveletDiscriminator(resolution, arch.d_channel_base, arch.channel_max)
    return G, D


SPEC = register(
    ModelSpec(
        name="styleswin",
        paper="Zhang et al. 2022 (CVPR), StyleSwin",
        build=build,
        style_based=True,
        data_space=IMAGENET,  # official reals: torchvision Normalize with ImageNet's mean and std
    )
)
