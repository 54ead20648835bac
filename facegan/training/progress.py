"""What a run shows while it runs: the progress bar, the history rows and dvclive, and the finiteness
checks of the loss terms that stop a diverged run naming its last good checkpoint. Only rank 0 shows.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from tqdm import tqdm

from facegan import checkpoint, handoff
from facegan.errors import UserError
from facegan.training import distributed
from facegan.training.context import RunContext
from facegan.training.live import LiveLog
from facegan.training.progressive import Segment
from facegan.training.state import TermLog, TrainState
from facegan.training.values import StepSchedule

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """A loss or a weight became NaN or inf; the message names the step and the last good checkpoint."""


def non_finite_error(what: str, step: int, ckpt_dir: Path) -> NonFiniteError:
    last = checkpoint.latest(ckpt_dir)
    where = f"last good checkpoint: {last}" if last else "no checkpoint written yet"
    return NonFiniteError(
        f"{what} is not finite at step {step} ({where}); lower the learning rate or use "
        f"train.precision=fp32, then re-run to resume from that checkpoint"
    )


def augment_p(state: TrainState) -> float | None:
    """ADA's current p (None for a model trained without augmentation)."""
    pipe = state.loss.augment_pipe
    return None if pipe is None else round(float(pipe.p), 6)


def history_row(state: TrainState, terms: TermLog, segment: Segment, alpha: float, device) -> dict:
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "kimg": round(state.nimg / 1000, 3),
        "step": state.step,
        "train_seconds": round(state.train_seconds, 2),
        "img_per_s": terms.nimg / max(terms.seconds, 1e-9),
        "segment": segment.name,
        "level": segment.level,
        "resolution": segment.resolution,
        "alpha": round(alpha, 4),
        "lr_g": state.opt_G.param_groups[0]["lr"],
        "lr_d": state.opt_D.param_groups[0]["lr"],
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "augment_p": augment_p(state),
        "losses": terms.means(),
    }


class TermCheck:
    """Loss terms kept on the device between checks, so that a step needs no host sync: `flush` averages
    them over the data-parallel ranks (every rank sees a NaN and stops together), moves them to the host
    in one copy, and stops the run naming the first step and term that is not finite."""

    def __init__(self, world: distributed.World, ckpt_dir: Path):
        self.world, self.ckpt_dir, self.steps = world, ckpt_dir, []

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.steps.append((step, list(terms), torch.stack([v.float() for v in terms.values()])))

    def flush(self) -> list[dict[str, float]]:
        if not self.steps:
            return []
        values = self.world.all_mean(torch.cat([v for _, _, v in self.steps])).cpu().tolist()
        out, offset = [], 0
        for step, names, _ in self.steps:
            row = dict(zip(names, values[offset : offset + len(names)]))
            offset += len(names)
            bad = [name for name, value in row.items() if not math.isfinite(value)]
            if bad:
                self.steps = []
                raise non_finite_error(bad[0], step, self.ckpt_dir)
            out.append(row)
        self.steps = []
        return out


class Progress:
    """The run's progress as the user sees it: the bar, the history rows and dvclive, all from rank 0."""

    def __init__(self, ctx: RunContext, state: TrainState, live: LiveLog):
        cfg, schedule = ctx.cfg, ctx.schedule
        self.live, self.terms = live, TermLog()
        if ctx.world.is_main:
            segments = ", ".join(
                f"{s['segment']} {s['start_kimg']:g}-{s['end_kimg']:g} kimg (batch {s['batch_size']})"
                for s in schedule.summary()
            )
            kinds = ", ".join(f"{name} {kind}" for name, kind in StepSchedule(cfg.params, schedule).kinds.items())
            log.info(
                "%s: phases %s; schedule %s; per-step values: %s",
                cfg.model,
                ", ".join(p.name for p in ctx.phases),
                segments,
                kinds,
            )
        self.bar = tqdm(
            total=schedule.total_nimg / 1000,
            initial=state.nimg / 1000,
            desc=f"train {cfg.model}",
            unit="kimg",
            mininterval=10,
            disable=not ctx.world.is_main,
        )

    def step(self, seconds: float, batch: int) -> None:
        self.terms.count(seconds, batch)
        # the last step may pass the kimg budget (3.008 of 3): the bar stops at its total, not past it
        self.bar.update(max(0.0, min(batch / 1000, self.bar.total - self.bar.n)))

    def row(self, state: TrainState, segment: Segment, alpha: float, device: torch.device) -> None:
        """Close the log interval: a history row, its dvclive step and the bar's numbers."""
        row = history_row(state, self.terms, segment, alpha, device)
        state.history.append(row)
        scalars = {k: v for k, v in row.items() if k not in ("segment", "step", "losses")}
        self.live.log(len(state.history) - 1, {**scalars, **row["losses"]})
        self.bar.set_postfix(
            segment=segment.name,
            alpha=f"{alpha:.2f}",
            **{k.replace("/", "_"): f"{v:.3f}" for k, v in row["losses"].items()},
        )
        self.terms = TermLog()

    def close(self, stats: handoff.TrainedRun | None) -> None:
        self.bar.close()
        if stats is not None:
            peak = None if stats.peak_memory_bytes is None else stats.peak_memory_bytes / 2**30
            self.live.summary(
                {
                    "kimg": stats.kimg,
                    "img_per_s": stats.img_per_s,
                    "train_seconds": stats.train_seconds,
                    "peak_memory_gib": peak,
                }
            )
        self.live.close()
