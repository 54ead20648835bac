"""Adaptive discriminator augmentation (ADA): Karras, Aittala, Hellsten, Laine, Lehtinen & Aila,
"Training Generative Adversarial Networks with Limited Data", NeurIPS 2020, as NVlabs'
stylegan2-ada-pytorch / stylegan3 `training/augment.py` (AugmentPipe) and `training_loop.py` define it.

Every image D sees, real or fake, in every phase (R1 included), goes through the pipe. Each
transform below is applied to an image with probability (its multiplier x p), drawn per image; the
`bgc` pipe that `train.py --aug=ada` builds enables all of them with multiplier 1. Order, ranges and
the random draws (value first, then the gate, from torch's global generator) are the official ones,
so that the official pipe and this one give the same images for the same random state
(tests/test_golden.py):

  group  transform     value drawn per image                        inverse matrix
  blit   xflip         i ~ floor(U(0, 1) * 2)                        scale(1 - 2i, 1)^-1
  blit   rotate90      i ~ floor(U(0, 1) * 4)                        rotate(pi/2 i)
  blit   xint          t ~ U(-1, 1)^2 * 0.125, rounded to pixels     translate(t W, t H)^-1
  geom   scale         s ~ 2^N(0, 0.2^2)                             scale(s, s)^-1
  geom   rotate (pre)  theta ~ U(-pi, pi), prob p_rot                rotate(theta)
  geom   aniso         s ~ 2^N(0, 0.2^2)                             scale(s, 1/s)^-1
  geom   rotate (post) theta ~ U(-pi, pi), prob p_rot                rotate(theta)
  geom   xfrac         t ~ N(0, 0.125^2)^2                           translate(t W, t H)^-1
  color  brightness    b ~ N(0, 0.2^2)                               translate3d(b, b, b)
  color  contrast      c ~ 2^N(0, 0.5^2)                             scale3d(c, c, c)
  color  lumaflip      i ~ floor(U(0, 1) * 2)                        I - 2 v v^T i (v: the luma axis)
  color  hue           theta ~ U(-pi, pi)                            rotation by theta around v
  color  saturation    s ~ 2^N(0, 1)                                 v v^T + (I - v v^T) s

Each transform's probability is its multiplier times p (`Multipliers`; a transform at 0 draws nothing,
as in the official pipe): all 1 in bgc; R3GAN's `train.py --aug=1` (pipe `r3gan`) halves the colour
transforms' and adds cutout (a square of half the image's side zeroed at a uniform centre, after the
colour transforms; the gate drawn first, then the centre). p_rot = 1 - sqrt(1 - rotate x p) so that a
pre- or a post-rotation happens with probability rotate x p. The geometric
part composes the inverse matrices and resamples once: reflect-pad by the margin the transform
needs, 2x up-sampling with the orthogonal sym6 wavelet low-pass, bilinear grid_sample, 2x
down-sampling with the same filter, crop; it runs whenever the pipe has geometric transforms, also
at p = 0 (as the official pipe). grid_sample has a second derivative on CPU and CUDA (checked by
tests/test_ada.py), so R1 through augmented reals works.

R3GAN does not adapt p: its loop sets it every step from its cosine schedule (facegan/training/cosine.py).
The adaptive p (`AdaRule`): D's real logits' signs, from every phase that evaluates D on reals
(Dmain and Dreg), are averaged over `interval` steps (and over data-parallel ranks);
p += sign(mean - target) * batch * interval / (kimg * 1000), floored at 0, after every `interval`-th
step (official: ada_target 0.6, ada_interval 4, ada_kimg 500; train.py --aug=ada).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from facegan.ops import downsample2d, setup_filter, upsample2d

# The sym6 wavelet's low-pass taps: the official pipe's geometric resampling filter (Hz_geom).
SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)


@dataclass(frozen=True)
class Multipliers:
    """Each transform's probability multiplier (its probability is multiplier x p); a transform at 0 draws
    nothing, as in the official pipe. The defaults are ADA's bgc pipe (train.py --augpipe=bgc)."""

    xflip: float = 1.0
    rotate90: float = 1.0
    xint: float = 1.0
    scale: float = 1.0
    rotate: float = 1.0
    aniso: float = 1.0
    xfrac: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    lumaflip: float = 1.0
    hue: float = 1.0
    saturation: float = 1.0
    cutout: float = 0.0


PIPES = {
    "bgc": Multipliers(),
    # brownvc/R3GAN train.py --aug=1: AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1,
    # xfrac=1, brightness=0.5, contrast=0.5, lumaflip=0.5, hue=0.5, saturation=0.5, cutout=1)
    "r3gan": Multipliers(brightness=0.5, contrast=0.5, lumaflip=0.5, hue=0.5, saturation=0.5, cutout=1.0),
}


@dataclass(frozen=True)
class Ranges:
    """The official AugmentPipe defaults for the bgc pipe (each a constructor argument there)."""

    xint_max: float = 0.125  # integer translation, as a fraction of the image size
    scale_std: float = 0.2  # log2 std of isotropic scaling
    rotate_max: float = 1.0  # arbitrary rotation range, 1 = the full circle
    aniso_std: float = 0.2  # log2 std of anisotropic scaling
    xfrac_std: float = 0.125  # std of fractional translation, as a fraction of the image size
    brightness_std: float = 0.2
    contrast_std: float = 0.5  # log2 std
    hue_max: float = 1.0  # hue rotation range, 1 = the full circle
    saturation_std: float = 1.0  # log2 std
    cutout_size: float = 0.5  # the cut square's side, as a fraction of the image size


# ------------------------------------------------------------------------------------------------
# Batched homogeneous matrices (N, 3, 3) in 2-D and (N, 4, 4) in colour space


def _stack(rows: list[list], like: torch.Tensor) -> torch.Tensor:
    """A (N, r, c) matrix from rows whose entries are per-image tensors (N,) or numbers."""
    full = [[e if isinstance(e, torch.Tensor) else torch.full_like(like, float(e)) for e in row] for row in rows]
    return torch.stack([torch.stack(row, -1) for row in full], -2)


def translate2d(tx, ty, like):
    return _stack([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def scale2d(sx, sy, like):
    return _stack([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _stack([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def translate3d(t: torch.Tensor) -> torch.Tensor:
    return _stack([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], t)


def scale3d(s: torch.Tensor) -> torch.Tensor:
    return _stack([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], s)


def rotate3d(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotation by theta (N,) around the unit axis v (4,) (its first three entries)."""
    vx, vy, vz = (float(v[i]) for i in range(3))
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _stack(
        [
            [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
            [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
            [0, 0, 0, 1],
        ],
        theta,
    )


def _gate(value: torch.Tensor, prob, identity: float) -> torch.Tensor:
    """The drawn value where U(0, 1) < prob, else the identity value (the gate is drawn after the value)."""
    shape = value.shape if value.ndim == 1 else (value.shape[0],) + (1,) * (value.ndim - 1)
    keep = torch.rand(shape, device=value.device) < prob
    return torch.where(keep, value, torch.full_like(value, identity))


# ------------------------------------------------------------------------------------------------
# The three groups: each draws its values in the official order and returns its matrix


def blit_and_geom_inverse(
    n: int, width: int, height: int, p: torch.Tensor, r: Ranges, device, m: Multipliers = PIPES["bgc"]
) -> torch.Tensor:
    """G_inv (N, 3, 3): output pixel -> input pixel, the product of every geometric transform's inverse."""
    one = torch.ones(n, device=device)
    G_inv = torch.eye(3, device=device).expand(n, 3, 3)
    if m.xflip > 0:
        i = _gate(torch.floor(torch.rand(n, device=device) * 2), m.xflip * p, 0.0)
        G_inv = G_inv @ scale2d(1 / (1 - 2 * i), one, one)
    if m.rotate90 > 0:
        i = _gate(torch.floor(torch.rand(n, device=device) * 4), m.rotate90 * p, 0.0)
        G_inv = G_inv @ rotate2d(math.pi / 2 * i)  # the inverse of a rotation by -pi/2 i
    if m.xint > 0:
        t = _gate((torch.rand(n, 2, device=device) * 2 - 1) * r.xint_max, m.xint * p, 0.0)
        G_inv = G_inv @ translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height), one)
    if m.scale > 0:
        s = _gate(torch.exp2(torch.randn(n, device=device) * r.scale_std), m.scale * p, 1.0)
        G_inv = G_inv @ scale2d(1 / s, 1 / s, one)
    p_rot = 1 - torch.sqrt((1 - m.rotate * p).clamp(0, 1))  # P(pre or post rotation) = rotate x p
    if m.rotate > 0:  # pre-rotation
        theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * r.rotate_max, p_rot, 0.0)
        G_inv = G_inv @ rotate2d(theta)
    if m.aniso > 0:
        s = _gate(torch.exp2(torch.randn(n, device=device) * r.aniso_std), m.aniso * p, 1.0)
        G_inv = G_inv @ scale2d(1 / s, s, one)
    if m.rotate > 0:  # post-rotation
        theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * r.rotate_max, p_rot, 0.0)
        G_inv = G_inv @ rotate2d(theta)
    if m.xfrac > 0:
        t = _gate(torch.randn(n, 2, device=device) * r.xfrac_std, m.xfrac * p, 0.0)
        G_inv = G_inv @ translate2d(-t[:, 0] * width, -t[:, 1] * height, one)
    return G_inv


LUMA_AXIS = torch.tensor([1.0, 1.0, 1.0, 0.0]) / math.sqrt(3)


def color_matrix(n: int, p: torch.Tensor, r: Ranges, device, m: Multipliers = PIPES["bgc"]) -> torch.Tensor:
    """C (N, 4, 4): colour_out = C @ colour_in, in homogeneous RGB."""
    eye = torch.eye(4, device=device)
    v = LUMA_AXIS.to(device)
    vvT = torch.outer(v, v)
    C = eye.expand(n, 4, 4)
    if m.brightness > 0:
        b = _gate(torch.randn(n, device=device) * r.brightness_std, m.brightness * p, 0.0)
        C = translate3d(b) @ C
    if m.contrast > 0:
        c = _gate(torch.exp2(torch.randn(n, device=device) * r.contrast_std), m.contrast * p, 1.0)
        C = scale3d(c) @ C
    if m.lumaflip > 0:  # a Householder reflection
        i = _gate(torch.floor(torch.rand(n, 1, 1, device=device) * 2), m.lumaflip * p, 0.0)
        C = (eye - 2 * vvT * i) @ C
    if m.hue > 0:
        theta = _gate((torch.rand(n, device=device) * 2 - 1) * math.pi * r.hue_max, m.hue * p, 0.0)
        C = rotate3d(v, theta) @ C
    if m.saturation > 0:
        s = _gate(torch.exp2(torch.randn(n, 1, 1, device=device) * r.saturation_std), m.saturation * p, 1.0)
        C = (vvT + (eye - vvT) * s) @ C
    return C


def cutout(images: torch.Tensor, prob: torch.Tensor, size: float) -> torch.Tensor:
    """Zero a square of side `size` (a fraction of the image) at a uniform centre, per image with
    probability `prob` (the gate drawn first, then the centre, as the official pipe)."""
    n, _, height, width = images.shape
    device = images.device
    side = torch.full([n, 2, 1, 1, 1], size, device=device)
    side = torch.where(torch.rand([n, 1, 1, 1, 1], device=device) < prob, side, torch.zeros_like(side))
    centre = torch.rand([n, 2, 1, 1, 1], device=device)
    x = torch.arange(width, device=device).reshape([1, 1, 1, -1])
    y = torch.arange(height, device=device).reshape([1, 1, -1, 1])
    outside_x = ((x + 0.5) / width - centre[:, 0]).abs() >= side[:, 0] / 2
    outside_y = ((y + 0.5) / height - centre[:, 1]).abs() >= side[:, 1] / 2
    outside_x, outside_y = torch.broadcast_tensors(outside_x, outside_y)
    return images * torch.logical_or(outside_x, outside_y).to(images.dtype)


# ------------------------------------------------------------------------------------------------
# Executing the transforms


def resample(images: torch.Tensor, G_inv: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Apply the inverse geometric transform G_inv (N, 3, 3) in pixel units centred on the image:
    reflect-pad, 2x up-sample, bilinear sampling, 2x down-sample, crop (the official order)."""
    n, c, height, width = images.shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=images.device)
    corners = corners.t().to(G_inv.dtype)
    corners = G_inv @ corners  # where the output's corners come from, (N, 3, 4)
    pad = filt.shape[0] // 4
    margin = corners[:, :2, :].permute(1, 0, 2).flatten(1)  # (xy, N * 4)
    margin = torch.cat([-margin, margin]).max(dim=1).values  # x0, y0, x1, y1
    margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, device=images.device, dtype=margin.dtype)
    margin = margin.clamp(min=0).minimum(torch.tensor([width - 1, height - 1] * 2, device=images.device).to(margin))
    mx0, my0, mx1, my1 = (int(m) for m in margin.ceil().tolist())

    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    one = torch.ones(n, device=images.device, dtype=G_inv.dtype)
    G_inv = translate2d(torch.full_like(one, (mx0 - mx1) / 2), torch.full_like(one, (my0 - my1) / 2), one) @ G_inv
    images = upsample2d(images, filt, up=2)
    G_inv = scale2d(2 * one, 2 * one, one) @ G_inv @ scale2d(one / 2, one / 2, one)
    half = torch.full_like(one, 0.5)
    G_inv = translate2d(-half, -half, one) @ G_inv @ translate2d(half, half, one)
    shape = [n, c, (height + pad * 2) * 2, (width + pad * 2) * 2]
    to_grid = scale2d(2 / images.shape[3] * one, 2 / images.shape[2] * one, one)
    from_grid = scale2d(shape[3] / 2 * one, shape[2] / 2 * one, one)
    G_inv = to_grid @ G_inv @ from_grid  # normalised [-1, 1] coordinates of output -> input
    grid = F.affine_grid(G_inv[:, :2, :], shape, align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return downsample2d(images, filt, down=2, padding=-pad * 2, flip_filter=True)


def recolor(images: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    n, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"ADA's colour transforms need RGB images, got {c} channels")
    flat = images.reshape(n, c, h * w)
    return (C[:, :3, :3] @ flat + C[:, :3, 3:]).reshape(n, c, h, w)


class AugmentPipe(nn.Module):
    """ADA's pipe (bgc by default); `p` (a buffer) is the probability multiplier the adaptive rule moves."""

    def __init__(self, p: float = 0.0, ranges: Ranges = Ranges(), multipliers: Multipliers = PIPES["bgc"]):
        super().__init__()
        self.ranges, self.multipliers = ranges, multipliers
        self.register_buffer("p", torch.tensor(float(p)))
        self.register_buffer("filter", setup_filter(list(SYM6)), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augmented images, computed in fp32 (fp64 for fp64 images) with autocast off (the official pipe
        runs in fp32). The draws are fp32 whatever the images' type, so the same random state gives the
        same transforms."""
        n, _, height, width = images.shape
        with torch.autocast(images.device.type, enabled=False):
            x = images.to(torch.promote_types(images.dtype, torch.float32))
            G_inv = blit_and_geom_inverse(n, width, height, self.p, self.ranges, x.device, self.multipliers)
            x = resample(x, G_inv.to(x.dtype), self.filter.to(x.dtype))
            C = color_matrix(n, self.p, self.ranges, x.device, self.multipliers)
            x = recolor(x, C.to(x.dtype))
            if self.multipliers.cutout > 0:
                x = cutout(x, self.multipliers.cutout * self.p, self.ranges.cutout_size)
            return x.to(images.dtype)


# ------------------------------------------------------------------------------------------------
# The adaptive probability


@dataclass(frozen=True)
class AdaRule:
    """How p moves: towards E[sign(D(real))] = target, by batch * interval / (kimg * 1000) per update."""

    target: float  # official ada_target 0.6
    interval: int  # steps between updates (official ada_interval 4)
    kimg: float  # kimg for p to move by 1 (official ada_kimg 500)

    def adjust(self, mean_sign: float, batch: int) -> float:
        direction = (mean_sign > self.target) - (mean_sign < self.target)  # np.sign, 0 on the target
        return direction * batch * self.interval / (self.kimg * 1000)


class SignTally:
    """Sum and count of D's real-logit signs since the last p update, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.totals = torch.zeros(2, device=device, dtype=torch.float64)  # sum of signs, count

    def add(self, real_logits: torch.Tensor) -> None:
        signs = real_logits.detach().sign().double()
        self.totals = self.totals.to(signs.device) + torch.stack([signs.sum(), signs.new_tensor(float(signs.numel()))])

    def take_mean(self, all_sum: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """The mean sign over every rank since the last call, and a fresh tally."""
        total, count = all_sum(self.totals).tolist()
        self.totals = torch.zeros_like(self.totals)
        return total / count if count else 0.0


def update_p(pipe: AugmentPipe, rule: AdaRule, tally: SignTally, batch: int, all_sum) -> float:
    """One ADA update after an interval's last step: move p, floored at 0 (no ceiling, as the official)."""
    mean_sign = tally.take_mean(all_sum)
    pipe.p.copy_((pipe.p + rule.adjust(mean_sign, batch)).clamp(min=0))
    return mean_sign
