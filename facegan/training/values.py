"""Every number the loop sets per step, from one place: `StepSchedule(model_params, schedule).at(nimg)`.

  value           constant / linear (every model)                cosine (R3GAN, facegan.training.cosine)
  lr_g, lr_d      the segment's lr, linearly to 0 over the last  lr_g/lr_d -> cosine.lr_final
                  lr_decay_kimg (0: constant)
  beta2_g/_d      Adam's own (None: left as built)               betas[1] -> cosine.beta2_final
  r1_gamma        loss.r1_gamma                                  loss.r1_gamma -> cosine.gamma_final
  EMA half-life   ema_kimg (ramped to ema_rampup x nimg)         0 -> ema_kimg
  augment p       None: ADA adapts it, `fixed` keeps it          0 -> augment.p (augment.mode cosine)
  blur sigma      StyleGAN3-R: blur_init_sigma linearly to 0 over blur_fade_kimg (0 for the others)

Which kind a value follows comes from the model's typed settings (`cosine_schedule()`, lr_decay_kimg,
the loss's blur), never from its name. Values are read at the images seen before the step, as the
official loops do at the top of an iteration (so the EMA's beta of step 0 makes G_ema a copy of G).
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan import settings
from facegan.training.cosine import cosine_decay
from facegan.training.progressive import Schedule, Segment


def blur_sigma(loss: settings.LossSettings, nimg: int) -> float:
    """StyleGAN3-R's D blur: blur_init_sigma px at the start, linearly to 0 at blur_fade_kimg."""
    if loss.blur_fade_kimg <= 0:
        return 0.0
    return max(1 - nimg / (loss.blur_fade_kimg * 1000), 0.0) * loss.blur_init_sigma


def ema_beta_of(half_life_nimg: float, batch: int) -> float:
    """The per-step decay of an EMA with this half-life in images (0: no EMA, G_ema is G)."""
    return 0.5 ** (batch / max(half_life_nimg, 1e-8))


@dataclass(frozen=True)
class StepValues:
    """The scheduled numbers of one step."""

    segment: Segment  # where in the (growing) schedule the step is: its level, resolution, batch
    lr_g: float
    lr_d: float
    beta2_g: float | None  # None: Adam's beta2 as the optimizer was built
    beta2_d: float | None
    r1_gamma: float  # R1's (and R2's) weight
    ema_half_life_nimg: float  # the G EMA's half-life in images before its ramp-up (what the stats report)
    ema_beta: float  # the G EMA's decay this step (ramp-up applied)
    augment_p: float | None  # None: the pipe keeps its own p (ADA adapts it, fixed keeps it, or no pipe)
    blur_sigma: float  # StyleGAN3-R's blur of every image D sees


class StepSchedule:
    """A run's per-step values: `at(nimg)`, and which kind each one follows (`kinds`, for the stats)."""

    def __init__(self, model_params: settings.ModelSettings, schedule: Schedule):
        self.params, self.schedule = model_params, schedule
        self.cosine = model_params.cosine_schedule()
        self.kinds = {
            "lr": "cosine" if self.cosine else ("linear" if model_params.lr_decay_kimg > 0 else "constant"),
            "beta2": "cosine" if self.cosine else "constant",
            "r1_gamma": "cosine" if self.cosine else "constant",
            "ema": "cosine" if self.cosine else ("linear ramp-up" if model_params.ema_rampup > 0 else "constant"),
            "augment_p": "cosine"
            if self.cosine and model_params.augment.mode == "cosine"
            else model_params.augment.mode,
            "blur_sigma": "linear" if model_params.loss.blur_fade_kimg > 0 else "constant",
        }

    def at(self, nimg: int) -> StepValues:
        segment = self.schedule.segment_at(nimg)
        return self._cosine_at(segment, nimg) if self.cosine else self._linear_at(segment, nimg)

    def ema_half_life(self, nimg: int) -> float:
        """The G EMA's half-life in images at `nimg` (before its ramp-up): ema_kimg, or R3GAN's cosine of it."""
        if self.cosine:
            return cosine_decay(nimg, 0.0, self.params.ema_kimg * 1000, self.cosine.decay_kimg * 1000)
        return self.params.ema_kimg * 1000

    def _linear_at(self, segment: Segment, nimg: int) -> StepValues:
        params = self.params
        decay = 1.0
        if params.lr_decay_kimg > 0:
            decay = min(max((self.schedule.total_nimg - nimg) / (params.lr_decay_kimg * 1000), 0.0), 1.0)
        half_life = self.ema_half_life(nimg)
        ramped = min(half_life, nimg * params.ema_rampup) if params.ema_rampup > 0 else half_life
        return StepValues(
            segment=segment,
            lr_g=segment.lr_g * decay,
            lr_d=segment.lr_d * decay,
            beta2_g=None,
            beta2_d=None,
            r1_gamma=params.loss.r1_gamma,
            ema_half_life_nimg=half_life,
            ema_beta=0.0 if half_life <= 0 else ema_beta_of(ramped, segment.batch_size),
            augment_p=None,
            blur_sigma=blur_sigma(params.loss, nimg),
        )

    def _cosine_at(self, segment: Segment, nimg: int) -> StepValues:
        params, cosine = self.params, self.cosine
        total = cosine.decay_kimg * 1000

        def at(start: float, end: float) -> float:
            return cosine_decay(nimg, start, end, total)

        ema_nimg = self.ema_half_life(nimg)
        return StepValues(
            segment=segment,
            lr_g=at(params.lr_g, cosine.lr_final),
            lr_d=at(params.lr_d, cosine.lr_final),
            beta2_g=at(params.betas_g[1], cosine.beta2_final),
            beta2_d=at(params.betas_d[1], cosine.beta2_final),
            r1_gamma=at(params.loss.r1_gamma, cosine.gamma_final),
            ema_half_life_nimg=ema_nimg,
            ema_beta=ema_beta_of(ema_nimg, segment.batch_size),
            augment_p=at(0.0, params.augment.p) if params.augment.mode == "cosine" else None,
            blur_sigma=blur_sigma(params.loss, nimg),
        )
