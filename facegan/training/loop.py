"""The training loop every model of the study shares, read top to bottom in `train`.

Set up (processes, device, precision, networks, optimizers, schedule, data), resume from the last
checkpoint if there is one, then take steps until the kimg budget is spent. A step draws its
random inputs, then runs each training phase due at it (facegan/training/phases.py and loss.py: Gmain, Greg,
Dmain, Dreg, each with its own optimizer step, as the official StyleGAN2-ADA/3 loop), updates
the G EMA once, and writes history rows, sample grids, G_ema snapshots and checkpoints on the
way. At the end it writes the trained G_ema and train_stats.json (facegan.handoff.TrainedRun).
Per-model behaviour comes from the model's params (loss, phase order, learning rates, betas,
EMA, lr decay, growing schedule) and its ModelSpec, never from the model's name.

Growing models follow facegan/training/progressive.Schedule: every step sets G, D and G_ema to
the segment's level and alpha, reals are average-pooled to the current resolution and faded like
G's output (PGGAN sec. 2), and batch size and learning rate are the segment's. Position is
counted in images shown, so a resumed run lands mid-segment.

Determinism: every random input of a step (sample indices, flips, one latent batch per phase,
WGAN-GP weights) comes from a generator seeded by (seed, step), and the global generators are
re-seeded the same way for the models' own noise and the phases' draws (style mixing, bCR), so a
resumed run repeats the uninterrupted one bit for bit and N data-parallel ranks see the global
batch one process sees (facegan/training/distributed.py).
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import torch

import models
from facegan import checkpoint, handoff
from facegan.data.cache import FaceCache
from facegan.device import resolve_device, resolve_precision
from facegan.errors import UserError
from facegan.training import distributed
from facegan.training.ada import PIPES, AugmentPipe
from facegan.training.context import RunContext
from facegan.training.live import LiveLog
from facegan.training.loss import NetworkPasses, build_loss, lazy_adam
from facegan.training.phases import build_phases, lazy_interval
from facegan.training.progress import NonFiniteError, Progress, TermCheck, non_finite_error
from facegan.training.progressive import Schedule
from facegan.training.run_files import RunFiles
from facegan.training.state import TrainState
from facegan.training.stats import trained_stats
from facegan.training.step import StepRunner

__all__ = ["NonFiniteError", "train"]

log = logging.getLogger(__name__)


def budget_spent(train_seconds: float, budget_minutes: float, world: distributed.World) -> bool:
    """Whether the training time is past train.budget_minutes, as every rank decides it together (their
    clocks differ a little; rank 0's says)."""
    if budget_minutes <= 0:
        return False
    spent = torch.tensor(float(train_seconds >= budget_minutes * 60) if world.is_main else 0.0)
    return bool(world.all_mean(spent).item() > 0)


def set_up_torch(cfg: handoff.ModelView, spec: models.ModelSpec) -> tuple[distributed.World, torch.device, torch.dtype]:
    world = distributed.init_from_env(cfg.train.device)
    device = distributed.device_for(world, resolve_device(cfg.train.device))
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train.deterministic
    return world, device, resolve_precision(cfg.train.precision, device, spec.official_precision)


def check_config(cfg: handoff.ModelView, spec: models.ModelSpec, schedule: Schedule, world: distributed.World) -> None:
    model_params = cfg.params
    if model_params.loss.pl_weight > 0 and not spec.style_based:
        raise UserError(f"models.{cfg.model}.loss.pl_weight needs a style-based generator: set it to 0")
    if model_params.loss.style_mixing_prob > 0 and not spec.style_based:
        raise UserError(f"models.{cfg.model}.loss.style_mixing_prob needs a style-based generator: set it to 0")
    for warning in model_params.warnings():
        log.warning("models.%s.%s", cfg.model, warning)
    for segment in schedule.segments:
        if segment.batch_size % world.size:
            raise UserError(
                f"batch size {segment.batch_size} of segment {segment.name} does not split over {world.size} "
                f"processes: make models.{cfg.model} batch sizes multiples of {world.size}"
            )


def build_state(ctx: RunContext) -> TrainState:
    cfg, spec, device, world = ctx.cfg, ctx.spec, ctx.device, ctx.world
    model_params, speed = cfg.params, cfg.train.speed
    if speed.compile == "cudagraphs" and device.type != "cuda":
        raise UserError(
            f"train.speed.compile=cudagraphs needs a CUDA device, training runs on {device.type}: "
            "set train.speed.compile to default or none"
        )
    G, D = models.build(cfg.model, model_params.arch, cfg.resolution)
    G, D = G.to(device).train(), D.to(device).train()
    if speed.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    fused = speed.fused_adam and device.type == "cuda"
    world.broadcast_module(G), world.broadcast_module(D)
    augment = model_params.augment
    start_p = 0.0 if augment.mode == "cosine" else augment.p  # a cosine p starts at 0 (facegan.training.values)
    pipe = None if augment.mode == "none" else AugmentPipe(p=start_p, multipliers=PIPES[augment.pipe]).to(device)
    passes = NetworkPasses(G, D, spec.style_based, speed.compile)
    return TrainState(
        G=G,
        D=D,
        G_ema=copy.deepcopy(G).eval().requires_grad_(False),
        opt_G=lazy_adam(G.parameters(), model_params.betas_g, lazy_interval(ctx.phases, "G"), fused),
        opt_D=lazy_adam(D.parameters(), model_params.betas_d, lazy_interval(ctx.phases, "D"), fused),
        scaler=torch.amp.GradScaler("cuda", enabled=ctx.dtype == torch.float16),
        loss=build_loss(passes, spec, model_params.loss, world.all_mean, pipe),
    )


def train(
    cfg: handoff.ModelView,
    cache_dir: Path,
    run_dir: Path,
    ckpt_root: Path = checkpoint.CHECKPOINT_ROOT,
    stop_after_kimg: float | None = None,
    live_dir: Path | None = None,
) -> handoff.TrainedRun | None:
    """Train cfg.model on the face cache; return the stats written to run_dir/train_stats.json.

    `stop_after_kimg` ends the run early without finishing it (tests use it to simulate an
    interruption); the next call resumes from the checkpoint. `live_dir` receives dvclive logs
    (None: none). Under torchrun every rank calls this; only rank 0 writes. Returns the stats
    written to train_stats.json, or None when the run stopped before its budget.
    """
    spec = models.get_spec(cfg.model)
    world, device, dtype = set_up_torch(cfg, spec)
    cache = FaceCache(cache_dir)
    if cache.resolution != cfg.resolution:
        raise UserError(
            f"face cache is {cache.resolution}px but data.resolution={cfg.resolution}: run `dvc repro preprocess`"
        )
    schedule = Schedule.for_model(cfg.model, cfg.params, int(np.log2(cfg.resolution)) - 2, spec.progressive)
    check_config(cfg, spec, schedule, world)
    ctx = RunContext(cfg, spec, schedule, build_phases(cfg.params.loss), world, device, dtype)
    files = RunFiles(ctx, cache, ckpt_root, run_dir)
    with files.lock():
        return train_locked(ctx, cache, files, stop_after_kimg, live_dir)


def train_locked(
    ctx: RunContext, cache: FaceCache, files: RunFiles, stop_after_kimg: float | None, live_dir: Path | None
) -> handoff.TrainedRun | None:
    """The training itself, holding the run's lock: resume, steps, outputs (see `train`)."""
    cfg, schedule, world, device = ctx.cfg, ctx.schedule, ctx.world, ctx.device
    train_params = cfg.train
    state = build_state(ctx)
    resume = checkpoint.latest(files.dir)
    if resume is not None:
        state.restore(checkpoint.load(resume), device)
        if world.is_main:
            log.info("resuming %s from %s at %.2f kimg", cfg.model, resume, state.nimg / 1000)
    progress = Progress(ctx, state, LiveLog(live_dir if world.is_main else None, resume=bool(resume)))
    stop_nimg = min(schedule.total_nimg, round(stop_after_kimg * 1000)) if stop_after_kimg else schedule.total_nimg
    files.before_training(state)

    check = TermCheck(world, files.dir)
    cache.to_device(device, train_params.speed.cache_on_device)
    step = StepRunner(ctx, cache)
    due = None
    while state.nimg < stop_nimg:
        before = state.nimg
        done = step.run(state)
        segment, alpha = done.segment, done.alpha
        check.add(state.step - 1, done.terms)
        progress.step(done.seconds, done.batch)
        due = files.due(
            before,
            state.nimg,
            stop_nimg,
            segment,
            lambda: budget_spent(state.train_seconds, train_params.budget_minutes, world),
        )
        # the finiteness check syncs with the device: every check_every steps, and always before a
        # history row or a checkpoint, so that no checkpoint holds a run that has diverged
        if due.sync or state.step % train_params.speed.check_every == 0:
            progress.terms.add_terms(check.flush())
        if due.log:
            progress.row(state, segment, alpha, device)
            bad = state.first_non_finite()
            if bad is not None:
                raise non_finite_error(f"weight {bad}", state.step, files.dir)
        files.after_step(state, segment, alpha, due)
        if due.final:  # train.budget_minutes: a finished run, at the first checkpoint past the budget
            break

    world.barrier()
    stats = None
    out_of_time = due is not None and due.final
    if state.nimg >= schedule.total_nimg or out_of_time:
        stopped_by = "budget" if state.nimg < schedule.total_nimg else "kimg"
        stats = trained_stats(ctx, state, progress.live, cache, stopped_by)
    progress.close(stats)
    if stats is not None and world.is_main:
        files.publish(state, stats, schedule.segment_at(state.nimg - 1))
    if stats is not None:
        distributed.shutdown(world)
    return stats
