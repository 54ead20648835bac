"""What a training run leaves behind: its scratch folder (checkpoints, G_ema snapshots, sample grids)
and the finished run folder. `RunFiles.due` decides once per step what is due (a history row, a grid,
a snapshot, a checkpoint); the loop and `after_step` both read that one answer. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from facegan import checkpoint, handoff
from facegan.data.cache import FaceCache, save_grid, to_uint8
from facegan.io import atomic_dir, write_json
from facegan.training.context import RunContext
from facegan.training.progress import non_finite_error
from facegan.training.progressive import Segment, to_resolution
from facegan.training.sampling import ready_to_sample
from facegan.training.state import TrainState


def run_identity(cfg: handoff.ModelView, cache_fingerprint: str, dtype: torch.dtype) -> dict:
    """What defines a run, and so its checkpoint key: the params, the precision it resolved to (an
    `auto` run checkpointed in bf16 on a GPU never resumes in fp32 on a CPU), and its face cache."""
    return {
        "model": cfg.model,
        "params": cfg.params.model_dump(),
        "seed": cfg.seed,
        "resolution": cfg.resolution,
        "precision": str(dtype).replace("torch.", ""),
        "cache": cache_fingerprint,
    }


def write_skipped(model: str, reason: str, run_dir: Path, live_dir: Path) -> None:
    """A model this experiment does not train: its stats say why, and no weights."""
    with atomic_dir(run_dir) as out:
        handoff.SkippedRun(status="skipped", model=model, reason=reason).write(out / "train_stats.json")
    # dvc.yaml declares the dvclive metrics and plots of every train stage: leave them empty
    write_json(live_dir / "metrics.json", {"status": "skipped"})
    (live_dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Due:
    """What one step's end writes or checks, decided once (`RunFiles.due`)."""

    log: bool  # a history row (every train.log_kimg, at the end and at each level's end)
    sample: bool  # a grid of G_ema's samples (every train.sample_kimg, each level's end, the end)
    snapshot: bool  # G_ema's weights for the FID-vs-kimg curve (every train.snapshot_kimg, the end)
    checkpoint: bool  # last.pt to resume from (every train.checkpoint_kimg, the end)
    level_done: bool  # a growing model's level ends with this step
    final: bool  # the time budget ends the run at this step's checkpoint

    @property
    def sync(self) -> bool:
        """Whether the loss terms must be checked (a device sync) before this step's outputs."""
        return self.log or self.checkpoint


class RunFiles:
    """What a run writes: checkpoints, snapshots and grids go to its scratch folder (which survives
    DVC deleting run_dir before a re-run); at the end they move into run_dir. Only rank 0 writes."""

    def __init__(self, ctx: RunContext, cache: FaceCache, ckpt_root: Path, run_dir: Path):
        cfg = ctx.cfg
        self.dir = checkpoint.checkpoint_dir(cfg.model, run_identity(cfg, cache.fingerprint, ctx.dtype), ckpt_root)
        self.model, self.z_dim, self.run_dir, self.world = cfg.model, cfg.params.arch.z_dim, run_dir, ctx.world
        self.train, self.schedule = cfg.train, ctx.schedule
        self.grid_z = torch.randn(
            cfg.train.grid_size**2,
            cfg.params.arch.z_dim,
            generator=torch.Generator().manual_seed(cfg.seed + 1),
        )

    def lock(self) -> contextlib.AbstractContextManager:
        """One process per run: rank 0 holds the run's lock for the whole training (checkpoint.RunLock)."""
        return checkpoint.RunLock(self.dir, self.model) if self.world.is_main else contextlib.nullcontext()

    def ready_to_sample(self, state: TrainState) -> torch.nn.Module:
        return ready_to_sample(state.G_ema, self.z_dim)

    def snapshot(self, state: TrainState, segment: Segment, alpha: float) -> None:
        self.ready_to_sample(state)
        checkpoint.save(
            self.dir / "snapshots" / f"kimg{state.nimg / 1000:08.2f}.pt",
            {"G_ema": state.G_ema.state_dict(), "kimg": state.nimg / 1000, "level": segment.level, "alpha": alpha},
        )

    def before_training(self, state: TrainState) -> None:
        """A fresh run's kimg-0 snapshot: the untrained generator, where every FID-vs-kimg curve starts."""
        if self.world.is_main and state.nimg == 0:
            first = self.schedule.segments[0]
            self.snapshot(state, first, first.alpha(0))

    @staticmethod
    def crossed(before: int, after: int, every_kimg: float) -> bool:
        return int(after / (every_kimg * 1000)) > int(before / (every_kimg * 1000))

    def due(self, before: int, after: int, stop_nimg: int, segment: Segment, out_of_time) -> Due:
        """What the step that took the run from `before` to `after` images leaves behind. `out_of_time` is
        asked only where a checkpoint is due (it syncs the ranks' clocks)."""
        train, total = self.train, self.schedule.total_nimg
        level_done = after >= total or self.schedule.segment_at(after).level != segment.level
        checkpoint_due = self.crossed(before, after, train.checkpoint_kimg) or after >= stop_nimg
        final = checkpoint_due and out_of_time()
        ended = after >= stop_nimg
        return Due(
            log=self.crossed(before, after, train.log_kimg) or ended or level_done or final,
            sample=self.crossed(before, after, train.sample_kimg) or level_done or final,
            snapshot=self.crossed(before, after, train.snapshot_kimg)
            or after >= total
            or final
            or (level_done and train.snapshot_level_ends),
            checkpoint=checkpoint_due,
            level_done=level_done,
            final=final,
        )

    def after_step(self, state: TrainState, segment: Segment, alpha: float, due: Due) -> None:
        if not self.world.is_main:
            return
        if due.sample:
            with torch.no_grad():
                G_ema = self.ready_to_sample(state)
                images = to_resolution(
                    G_ema(self.grid_z.to(next(G_ema.parameters()).device)).float(), segment.resolution
                )
            name = f"res{segment.resolution:04d}_kimg{state.nimg / 1000:08.2f}.png"
            save_grid(to_uint8(images), self.dir / "samples" / name, self.train.grid_size)
        if due.snapshot:  # at the end of every resolution too: FID per resolution for growing models
            self.snapshot(state, segment, alpha)
        if due.checkpoint:
            bad = state.first_non_finite()
            if bad is not None:  # never write a checkpoint that cannot be resumed from
                raise non_finite_error(f"weight {bad}", state.step, self.dir)
            checkpoint.save(
                self.dir / "last.pt", state.checkpoint(segment=segment.name, level=segment.level, alpha=alpha)
            )

    def publish(self, state: TrainState, stats: handoff.TrainedRun, last: Segment) -> None:
        """The finished run: G_ema, stats, snapshots and grids move into run_dir as one folder. `last` is
        the segment the run ended in (before the final level when the time budget stopped it)."""
        weights = {
            "G_ema": self.ready_to_sample(state).state_dict(),
            "kimg": state.nimg / 1000,
            "level": last.level,
            "alpha": last.alpha(state.nimg),
        }
        checkpoint.save(self.dir / "G_ema.pt", weights)
        stats.write(self.dir / "train_stats.json")
        (self.dir / "samples").mkdir(exist_ok=True)
        with atomic_dir(self.run_dir) as out:
            for name in ("samples", "snapshots", "G_ema.pt", "train_stats.json"):
                shutil.move(str(self.dir / name), str(out / name))
        shutil.rmtree(self.dir)  # the finished run lives in run_dir (and DVC's cache) now
