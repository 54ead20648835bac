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

facegan.training.values reads them, with every other model's per-step values, at the images seen
before each step, as the official loop does at the top of its iteration (the EMA's beta too: 0.5 **
(batch / max(half-life, 1e-8)), so G_ema starts as G).
"""

from __future__ import annotations

import math


def cosine_decay(nimg: float, start: float, end: float, total_nimg: float) -> float:
    """The official cosine_decay_with_warmup(nimg, start, total_nimg, end) without warmup or hold."""
    if nimg > total_nimg:
        return end
    decay = 0.5 * (1 + math.cos(math.pi * nimg / total_nimg))
    return start + (1 - decay) * (end - start)
