"""What a training run leaves behind and shows while it runs: its scratch folder (checkpoints,
G_ema snapshots, sample grids) and the finished run folder, the history rows, the progress bar and
dvclive, the finiteness checks of the loss terms, and train_stats.json (facegan.handoff.TrainedRun).
Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import models
from facegan import checkpoint, handoff, settings
from facegan.data.cache import FaceCache, save_grid, to_uint8
from facegan.errors import UserError
from facegan.io import atomic_dir, write_json
from facegan.training import distributed
from facegan.training.cosine import cosine_values
from facegan.training.live import LiveLog
from facegan.training.phases import Phase
from facegan.training.progressive import Schedule, Segment, to_resolution
from facegan.training.state import TermLog, TrainState

log = logging.getLogger(__name__)


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


class NonFiniteError(UserError):
    """A loss or a weight became NaN or inf; the message names the step and the last good checkpoint."""


def non_finite_error(what: str, step: int, ckpt_dir: Path) -> NonFiniteError:
    last = checkpoint.latest(ckpt_dir)
    where = f"last good checkpoint: {last}" if last else "no checkpoint written yet"
    return NonFiniteError(
        f"{what} is not finite at step {step} ({where}); lower the learning rate or use "
        f"train.precision=fp32, then re-run to resume from that checkpoint"
    )


def kernel_fallbacks() -> dict[str, str]:
    """Custom ops whose Triton kernel failed in this process and fell back to the reference path.

    Read through sys.modules: a model that never loads facegan.ops (DCGAN) has none, and its
    training does not depend on the ops' code."""
    ops = sys.modules.get("facegan.ops")
    return ops.fallbacks() if ops is not None else {}


class RunFiles:
    """What a run writes: checkpoints, snapshots and grids go to its scratch folder (which survives
    DVC deleting run_dir before a re-run); at the end they move into run_dir. Only rank 0 writes."""

    def __init__(
        self,
        cfg: handoff.ModelView,
        cache: FaceCache,
        ckpt_root: Path,
        run_dir: Path,
        world: distributed.World,
        total_nimg: int,
        dtype: torch.dtype,
    ):
        self.dir = checkpoint.checkpoint_dir(cfg.model, run_identity(cfg, cache.fingerprint, dtype), ckpt_root)
        self.model, self.z_dim = cfg.model, cfg.params.arch.z_dim
        self.run_dir, self.world, self.train, self.total_nimg = run_dir, world, cfg.train, total_nimg
        self.grid_z = torch.randn(
            cfg.train.grid_size**2,
            cfg.params.arch.z_dim,
            generator=torch.Generator().manual_seed(cfg.seed + 1),
        )

    def lock(self) -> contextlib.AbstractContextManager:
        """One process per run: rank 0 holds the run's lock for the whole training (checkpoint.RunLock)."""
        return checkpoint.RunLock(self.dir, self.model) if self.world.is_main else contextlib.nullcontext()

    def ready_to_sample(self, state: TrainState) -> torch.nn.Module:
        """G_ema as every output shows it (its BatchNorm statistics re-estimated, where it has any)."""
        refresh_batchnorm(state.G_ema, self.z_dim, next(state.G_ema.parameters()).device)
        return state.G_ema

    def snapshot(self, state: TrainState, segment: Segment, alpha: float) -> None:
        self.ready_to_sample(state)
        checkpoint.save(
            self.dir / "snapshots" / f"kimg{state.nimg / 1000:08.2f}.pt",
            {"G_ema": state.G_ema.state_dict(), "kimg": state.nimg / 1000, "level": segment.level, "alpha": alpha},
        )

    def before_training(self, state: TrainState, first: Segment) -> None:
        """A fresh run's kimg-0 snapshot: the untrained generator, where every FID-vs-kimg curve starts."""
        if self.world.is_main and state.nimg == 0:
            self.snapshot(state, first, first.alpha(0))

    def crossed(self, before: int, after: int, every_kimg: float) -> bool:
        return int(after / (every_kimg * 1000)) > int(before / (every_kimg * 1000))

    def checkpoint_due(self, before: int, after: int, stop_nimg: int) -> bool:
        return self.crossed(before, after, self.train.checkpoint_kimg) or after >= stop_nimg

    def after_step(
        self,
        state: TrainState,
        segment: Segment,
        alpha: float,
        before: int,
        stop_nimg: int,
        level_done: bool,
        final: bool = False,
    ) -> None:
        if not self.world.is_main:
            return
        nimg, train_params = state.nimg, self.train
        if self.crossed(before, nimg, train_params.sample_kimg) or level_done or final:
            with torch.no_grad():
                G_ema = self.ready_to_sample(state)
                images = to_resolution(
                    G_ema(self.grid_z.to(next(G_ema.parameters()).device)).float(), segment.resolution
                )
            name = f"res{segment.resolution:04d}_kimg{nimg / 1000:08.2f}.png"
            save_grid(to_uint8(images), self.dir / "samples" / name, train_params.grid_size)
        # a snapshot at the end of every resolution too: FID per resolution for growing models
        if (
            self.crossed(before, nimg, train_params.snapshot_kimg)
            or nimg >= self.total_nimg
            or final
            or (level_done and train_params.snapshot_level_ends)
        ):
            self.snapshot(state, segment, alpha)
        if self.checkpoint_due(before, nimg, stop_nimg):
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


def ema_kimg_at(model_params: settings.ModelSettings, nimg: int) -> float:
    """The G EMA's half-life in kimg after `nimg` images: ema_kimg, or where R3GAN's cosine has taken it."""
    scheduled = cosine_values(model_params, nimg)
    return model_params.ema_kimg if scheduled is None else scheduled.ema_nimg / 1000


def augment_p(state: TrainState) -> float | None:
    """ADA's current p (None for a model trained without augmentation)."""
    pipe = state.loss.augment_pipe
    return None if pipe is None else round(float(pipe.p), 6)


def trained_stats(
    cfg,
    spec,
    state: TrainState,
    schedule: Schedule,
    phases,
    world,
    device,
    dtype,
    live,
    cache: FaceCache,
    stopped_by: str,
) -> handoff.TrainedRun:
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    segments = {
        name: handoff.SegmentStats(**s, img_per_s=round(s["nimg"] / max(s["seconds"], 1e-9), 2))
        for name, s in state.segment_stats.items()
    }
    return handoff.TrainedRun(
        status="trained",
        model=cfg.model,
        paper=spec.paper,
        resolution=cfg.resolution,
        resolutions_reached=sorted({s.resolution for s in schedule.segments if s.start_nimg < state.nimg}),
        kimg=round(state.nimg / 1000, 3),
        steps=state.step,
        batch_size=schedule.segments[-1].batch_size,
        world_size=world.size,
        train_seconds=round(state.train_seconds, 2),
        img_per_s=round(state.nimg / max(state.train_seconds, 1e-9), 2),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=str(dtype).replace("torch.", ""),
        peak_memory_bytes=peak,
        params_G=models.count_params(state.G),
        params_D=models.count_params(state.D),
        history=[handoff.HistoryRow(**row) for row in state.history],
        schedule=[handoff.ScheduleEntry(**entry) for entry in schedule.summary()],
        segments=segments,
        training_phases=[p.name for p in phases],
        dvclive=live.enabled,
        kernel_fallbacks=kernel_fallbacks(),
        cache_fingerprint=cache.fingerprint,
        augment=cfg.params.augment.mode,
        augment_p=augment_p(state),
        xflip=cfg.params.xflip,
        data_space=spec.data_space.name,
        ema_kimg=ema_kimg_at(cfg.params, state.nimg),
        batchnorm="re-estimated" if batchnorm_layers(state.G_ema) else "none",
        stopped_by=stopped_by,
        budget_minutes=cfg.train.budget_minutes,
    )


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

    def __init__(
        self,
        cfg: handoff.ModelView,
        schedule: Schedule,
        phases: list[Phase],
        state: TrainState,
        live: LiveLog,
        world: distributed.World,
    ):
        self.live, self.terms = live, TermLog()
        if world.is_main:
            segments = ", ".join(
                f"{s['segment']} {s['start_kimg']:g}-{s['end_kimg']:g} kimg (batch {s['batch_size']})"
                for s in schedule.summary()
            )
            log.info("%s: phases %s; schedule %s", cfg.model, ", ".join(p.name for p in phases), segments)
        self.bar = tqdm(
            total=schedule.total_nimg / 1000,
            initial=state.nimg / 1000,
            desc=f"train {cfg.model}",
            unit="kimg",
            mininterval=10,
            disable=not world.is_main,
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


def batchnorm_layers(G: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def refresh_batchnorm(G: torch.nn.Module, z_dim: int, device: torch.device, batches: int = 16, batch: int = 64) -> None:
    """Re-estimate the running statistics of G's BatchNorm layers for G's own weights (DCGAN's G_ema: the
    EMA averages weights, and the statistics copied from G belong to G's). The statistics are the
    cumulative average of the batch statistics over `batches` batches of fixed latents, so that G in
    eval mode draws what the official code draws in train mode with large batches."""
    norms = batchnorm_layers(G)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    G.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(batches):
        G(torch.randn(batch, z_dim, generator=gen).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    G.eval()
