"""The phase schedule of a run: progressive growing (Karras et al. 2018, sec. 3) or one flat phase.

A progressive run starts at 4x4 (level 0) and, for each higher level, first fades the new block in
(alpha 0 -> 1 linearly in images shown) and then trains it at alpha 1. Each phase has its own
length in kimg and its own batch size, read from the `progressive` block of a progressive model's
params:

    progressive:
      stable_kimg: [600.0]      # train phase per level (4x4, 8x8, ...); the last entry repeats
      fade_kimg: [600.0]        # fade-in phase into 8x8, 16x16, ...; the last entry repeats
      batch_sizes: [64, 64, 32] # per level, the last entry repeats; [] = the model's batch_size
      reset_optimizer: true     # clear Adam's moments when a new block starts fading in (official PGGAN)

The last level's train phase runs until the model's `kimg` budget is spent. Non-progressive
models get one phase at the final level. Position in the schedule is a count of images shown, so
a run resumed from a checkpoint lands at the same phase and alpha (mid-phase included).
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.errors import UserError


@dataclass(frozen=True)
class Phase:
    index: int
    level: int  # 0 is 4x4, level k is 4 * 2**k
    fade: bool  # True: the level's block fades in, alpha rises from 0 to 1
    start_nimg: int
    end_nimg: int
    batch_size: int

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


def growing_kimg(cfg: dict, final_level: int) -> float:
    """kimg of every phase before the last level's train phase (the `progressive` block `cfg`)."""
    stable = sum(_per_level(cfg["stable_kimg"], level, 0.0) for level in range(final_level))
    fade = sum(_per_level(cfg["fade_kimg"], level - 1, 0.0) for level in range(1, final_level + 1))
    return float(stable + fade)


class Schedule:
    """Ordered phases covering [0, total_nimg); `phase_at(nimg)` finds the one that holds nimg."""

    def __init__(self, phases: list[Phase]):
        self.phases = phases
        self.total_nimg = phases[-1].end_nimg

    @classmethod
    def flat(cls, kimg: float, batch_size: int, level: int) -> Schedule:
        return cls([Phase(0, level, False, 0, round(kimg * 1000), batch_size)])

    @classmethod
    def progressive(cls, model: str, kimg: float, batch_size: int, final_level: int, cfg: dict) -> Schedule:
        phases: list[Phase] = []
        nimg = 0
        for level in range(final_level + 1):
            batch = _per_level(cfg["batch_sizes"], level, batch_size)
            steps = ["fade", "train"] if level > 0 else ["train"]
            for kind in steps:
                if kind == "train" and level == final_level:
                    length = round(kimg * 1000) - nimg
                    if length <= 0:
                        raise UserError(
                            f"models.{model}.kimg={kimg} ends before the growing schedule reaches "
                            f"{4 * 2**final_level}x{4 * 2**final_level} ({nimg / 1000:g} kimg): raise kimg or "
                            f"shorten models.{model}.progressive.stable_kimg/fade_kimg"
                        )
                else:
                    source = cfg["fade_kimg"] if kind == "fade" else cfg["stable_kimg"]
                    length = round(_per_level(source, level - 1 if kind == "fade" else level, 0.0) * 1000)
                    if length <= 0:
                        continue  # a zero-length phase (e.g. no fade): skip it
                phases.append(Phase(len(phases), level, kind == "fade", nimg, nimg + length, batch))
                nimg += length
        return cls(phases)

    @classmethod
    def for_model(cls, model: str, model_params: dict, final_level: int, progressive: bool) -> Schedule:
        if not progressive:
            return cls.flat(model_params["kimg"], model_params["batch_size"], final_level)
        if "progressive" not in model_params:
            raise UserError(
                f"models.{model} needs a `progressive` block (stable_kimg, fade_kimg, batch_sizes, "
                f"reset_optimizer): add it to params.yaml, see models.pggan"
            )
        return cls.progressive(
            model, model_params["kimg"], model_params["batch_size"], final_level, model_params["progressive"]
        )

    def phase_at(self, nimg: int) -> Phase:
        for phase in self.phases:
            if nimg < phase.end_nimg:
                return phase
        return self.phases[-1]

    def summary(self) -> list[dict]:
        return [
            {
                "phase": p.name,
                "level": p.level,
                "resolution": p.resolution,
                "start_kimg": p.start_nimg / 1000,
                "end_kimg": p.end_nimg / 1000,
                "batch_size": p.batch_size,
            }
            for p in self.phases
        ]
