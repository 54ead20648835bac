"""Differentiable augmentations of bCR, as StyleSwin applies them (its `CR_DiffAug`, after
DiffAugment, Zhao et al. 2020): a random horizontal flip, a translation by up to 1/8 of the
image, brightness, saturation and contrast jitter, and a cutout of half the image size, each
drawn per sample. Every draw comes from torch's global generator, which the training loop seeds
per step, so a resumed run repeats them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION = 1 / 8  # largest shift, as a fraction of the image size
CUTOUT = 1 / 2  # side of the cutout square, as a fraction of the image size


def flip(x: torch.Tensor) -> torch.Tensor:
    mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(mask, x.flip(3), x)


def color(x: torch.Tensor) -> torch.Tensor:
    """Brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel mean) and contrast
    (x U(0.5, 1.5) around the image mean), in that order."""
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = TRANSLATION) -> torch.Tensor:
    """Shift each image by an integer number of pixels in [-ratio*size, ratio*size], zero-filled."""
    n, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_x = torch.randint(-sx, sx + 1, [n, 1, 1], device=x.device)
    shift_y = torch.randint(-sy, sy + 1, [n, 1, 1], device=x.device)
    batch, rows, cols = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + shift_x + 1, 0, h + 1)
    cols = torch.clamp(cols + shift_y + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = CUTOUT) -> torch.Tensor:
    """Zero a square of side ratio*size at a random place of each image (it may hang over the edge)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    off_x = torch.randint(0, h + (1 - ch % 2), [n, 1, 1], device=x.device)
    off_y = torch.randint(0, w + (1 - cw % 2), [n, 1, 1], device=x.device)
    batch, rows, cols = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + off_x - ch // 2, 0, h - 1)
    cols = torch.clamp(cols + off_y - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


def consistency_augment(x: torch.Tensor) -> torch.Tensor:
    """bCR's augmentation of a batch of images in [-1, 1]."""
    return cutout(color(translation(flip(x))))
