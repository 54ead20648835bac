"""train_stats.json of a finished run (facegan.handoff.TrainedRun): what the evaluation and the report
read about how the model trained."""

from __future__ import annotations

import sys

import torch

import models
from facegan import handoff
from facegan.data.cache import FaceCache
from facegan.training.context import RunContext
from facegan.training.live import LiveLog
from facegan.training.progress import augment_p
from facegan.training.sampling import batchnorm_layers
from facegan.training.state import TrainState
from facegan.training.values import StepSchedule


def kernel_fallbacks() -> dict[str, str]:
    """Custom ops whose Triton kernel failed in this process and fell back to the reference path.

    Read through sys.modules: a model that never loads facegan.ops (DCGAN) has none, and its
    training does not depend on the ops' code."""
    ops = sys.modules.get("facegan.ops")
    return ops.fallbacks() if ops is not None else {}


def trained_stats(
    ctx: RunContext, state: TrainState, live: LiveLog, cache: FaceCache, stopped_by: str
) -> handoff.TrainedRun:
    """The finished run's stats: what it trained, how fast, with which recipe, and its history."""
    cfg, spec, schedule, device, dtype = ctx.cfg, ctx.spec, ctx.schedule, ctx.device, ctx.dtype
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
        world_size=ctx.world.size,
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
        training_phases=[p.name for p in ctx.phases],
        dvclive=live.enabled,
        kernel_fallbacks=kernel_fallbacks(),
        cache_fingerprint=cache.fingerprint,
        augment=cfg.params.augment.mode,
        augment_p=augment_p(state),
        xflip=cfg.params.xflip,
        data_space=spec.data_space.name,
        ema_kimg=StepSchedule(cfg.params, schedule).ema_half_life(state.nimg) / 1000,
        batchnorm="re-estimated" if batchnorm_layers(state.G_ema) else "none",
        stopped_by=stopped_by,
        budget_minutes=cfg.train.budget_minutes,
    )
