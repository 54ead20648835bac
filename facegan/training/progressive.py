"""The schedule of a run: progressive growing (Karras et al. 2018, sec. 3) or one flat segment.

A growing run starts at `initial_resolution` (4x4 for PGGAN, 8x8 for StyleGAN) and, for each
higher level, first fades the new block in (alpha 0 -> 1 linearly in images shown) and then
trains it at alpha 1. Each such segment has its own length in kimg, batch size and learning rate,
read from the `progressive` block of a growing model's params:

    progressive:
      initial_resolution: 8      # the first level trained (official StyleGAN: lod_initial_resolution)
      stable_kimg: [600.0]       # train segment per level, from the initial one; the last entry repeats
      fade_kimg: [600.0]         # fade-in segment into each higher level; the last entry repeats
      batch_sizes: [64, 64, 32]  # per level from 4x4, the last entry repeats; [] = the model's batch_size
      lrs: [0.001, 0.0015]       # per level from 4x4 (G and D), the last entry repeats; [] = lr_g / lr_d
      reset_optimizer: true      # clear Adam's moments where a fade-in starts and where it ends (official)

Per-level lists are indexed from 4x4 (level 0), as the official minibatch and lr dicts are keyed
by resolution, whatever level training starts at. A fade-in into level L uses level L's batch
size and lr, as the official schedules do. The last level's train segment runs until the
model's `kimg` budget is spent. Non-growing models get one segment at the final level. Position
in the schedule is a count of images shown, so a resumed run lands at the same segment and alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facegan import settings
from facegan.errors import UserError


@dataclass(frozen=True)
class Segment:
    index: int
    level: int  # 0 is 4x4, level k is 4 * 2**k
    fade: bool  # True: the level's block fades in, alpha rises from 0 to 1
    start_nimg: int
    end_nimg: int
    batch_size: int
    lr_g: float
    lr_d: float

    @property
    def resolution(self) -> int:
        return 4 * 2**self.level

    @property
    def name(self) -> str:
        return f"{'fade' if self.fade else 'train'}{self.resolution}"

    def alpha(self, nimg: int) -> float:
        if not self.fade:
            return 1.0
        return min(max((nimg - self.start_nimg) / max(self.end_nimg - self.start_nimg, 1), 0.0), 1.0)


def _per_level(values: list, level: int, fallback):
    if not values:
        return fallback
    return values[min(level, len(values) - 1)]


def initial_level(cfg: settings.ProgressiveSettings) -> int:
    return int(math.log2(cfg.initial_resolution)) - 2


def growing_kimg(cfg: settings.ProgressiveSettings, final_level: int) -> float:
    """kimg of every segment before the last level's train segment (the `progressive` block `cfg`)."""
    first = initial_level(cfg)
    stable = sum(_per_level(cfg.stable_kimg, level - first, 0.0) for level in range(first, final_level))
    fade = sum(_per_level(cfg.fade_kimg, level - first - 1, 0.0) for level in range(first + 1, final_level + 1))
    return float(stable + fade)


class Schedule:
    """Ordered segments covering [0, total_nimg); `segment_at(nimg)` finds the one that holds nimg."""

    def __init__(self, segments: list[Segment]):
        self.segments = segments
        self.total_nimg = segments[-1].end_nimg

    @classmethod
    def flat(cls, model_params: settings.ModelSettings, level: int) -> Schedule:
        p = model_params
        return cls([Segment(0, level, False, 0, round(p.kimg * 1000), p.batch_size, p.lr_g, p.lr_d)])

    @classmethod
    def progressive(cls, model: str, model_params: settings.ModelSettings, final_level: int) -> Schedule:
        p, cfg = model_params, model_params.progressive
        first = initial_level(cfg)
        if first > final_level:
            raise UserError(
                f"models.{model}.progressive.initial_resolution={cfg.initial_resolution} is above the final "
                f"resolution {4 * 2**final_level}: lower it"
            )
        segments: list[Segment] = []
        nimg = 0
        for level in range(first, final_level + 1):
            batch = _per_level(cfg.batch_sizes, level, p.batch_size)
            lr_g, lr_d = _per_level(cfg.lrs, level, p.lr_g), _per_level(cfg.lrs, level, p.lr_d)
            for fade in [True, False] if level > first else [False]:
                if not fade and level == final_level:
                    length = round(p.kimg * 1000) - nimg
                    if length <= 0:
                        raise UserError(
                            f"models.{model}.kimg={p.kimg} ends before the growing schedule reaches "
                            f"{4 * 2**final_level}x{4 * 2**final_level} ({nimg / 1000:g} kimg): raise kimg or "
                            f"shorten models.{model}.progressive.stable_kimg/fade_kimg"
                        )
                else:
                    source, index = (cfg.fade_kimg, level - first - 1) if fade else (cfg.stable_kimg, level - first)
                    length = round(_per_level(source, index, 0.0) * 1000)
                    if length <= 0:
                        continue  # a zero-length segment (e.g. no fade): skip it
                segments.append(Segment(len(segments), level, fade, nimg, nimg + length, batch, lr_g, lr_d))
                nimg += length
        return cls(segments)

    @classmethod
    def for_model(
        cls, model: str, model_params: settings.ModelSettings, final_level: int, progressive: bool
    ) -> Schedule:
        if not progressive:
            return cls.flat(model_params, final_level)
        return cls.progressive(model, model_params, final_level)

    def segment_at(self, nimg: int) -> Segment:
        for segment in self.segments:
            if nimg < segment.end_nimg:
                return segment
        return self.segments[-1]

    def summary(self) -> list[dict]:
        return [
            {
                "segment": s.name,
                "level": s.level,
                "resolution": s.resolution,
                "start_kimg": s.start_nimg / 1000,
                "end_kimg": s.end_nimg / 1000,
                "batch_size": s.batch_size,
            }
            for s in self.segments
        ]


def to_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool images down to `resolution` (the box filter PGGAN used for its reals)."""
    factor = images.shape[-1] // resolution
    return F.avg_pool2d(images, factor) if factor > 1 else images


def prepare_reals(images: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Reals at the current level; during a fade-in, blended with the level below, upsampled
    (PGGAN sec. 2: 'we interpolate between two resolutions of the real images')."""
    images = to_resolution(images, resolution)
    if alpha < 1:
        low = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
        images = low.lerp(images, alpha)
    return images
