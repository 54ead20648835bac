"""R3GAN's schedules on images seen (brownvc/R3GAN training/training_loop.py: `cosine_decay_with_warmup`,
called with no warmup and no hold by every preset of train.py).

Each value moves from its start to its end along half a cosine over `cosine.decay_kimg` thousand images,
then stays at its end:

  value(n) = start + (1 - (1 + cos(pi n / N)) / 2) (end - start)    n <= N,   end after

  value          start                    end                     official (FFHQ-64 / FFHQ-256)
  lr (G and D)   lr_g, lr_d               cosine.lr_final         2e-4 -> 5e-5
  Adam beta2     betas_g[1], betas_d[1]   cosine.beta2_final      0.9 -> 0.99 (beta1 stays 0)
  gamma (R1, R2) loss.r1_gamma            cosine.gamma_final      2 -> 0.2 / 150 -> 15
  EMA half-life  0 images                 ema_kimg                0 -> 500k images
  augment p      0                        augment.p               0 -> 0.3

The loop evaluates them at the images seen before each step, as the official loop does at the top of
its iteration (the EMA's beta too: 0.5 ** (batch / max(half-life, 1e-8)), so G_ema starts as G).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from facegan import settings


def cosine_decay(nimg: float, start: float, end: float, total_nimg: float) -> float:
    """The official cosine_decay_with_warmup(nimg, start, total_nimg, end) without warmup or hold."""
    if nimg > total_nimg:
        return end
    decay = 0.5 * (1 + math.cos(math.pi * nimg / total_nimg))
    return start + (1 - decay) * (end - start)


@dataclass(frozen=True)
class CosineValues:
    """Every scheduled value of one step."""

    lr_g: float
    lr_d: float
    beta2_g: float
    beta2_d: float
    r1_gamma: float
    ema_nimg: float  # the G EMA's half-life in images
    augment_p: float


def cosine_values(model_params: settings.ModelSettings, nimg: float) -> CosineValues | None:
    """The scheduled values at `nimg` images seen, or None for a model without a `cosine` section."""
    cosine: settings.CosineSettings | None = getattr(model_params, "cosine", None)
    if cosine is None:
        return None
    total = cosine.decay_kimg * 1000

    def at(start: float, end: float) -> float:
        return cosine_decay(nimg, start, end, total)

    return CosineValues(
        lr_g=at(model_params.lr_g, cosine.lr_final),
        lr_d=at(model_params.lr_d, cosine.lr_final),
        beta2_g=at(model_params.betas_g[1], cosine.beta2_final),
        beta2_d=at(model_params.betas_d[1], cosine.beta2_final),
        r1_gamma=at(model_params.loss.r1_gamma, cosine.gamma_final),
        ema_nimg=at(0.0, model_params.ema_kimg * 1000),
        augment_p=at(0.0, model_params.augment.p) if model_params.augment.mode == "cosine" else model_params.augment.p,
    )
