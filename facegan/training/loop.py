"""The training loop every model of the study shares, read top to bottom in `train`.

Set up (processes, device, precision, networks, optimizers, schedule, data), resume from the last
checkpoint if there is one, then take steps until the kimg budget is spent. A step draws its
random inputs, then runs each training phase due at it (facegan/training/phases.py: Gmain, Greg,
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

import contextlib
import copy
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import models
from facegan import handoff
from facegan.data.cache import FaceCache, save_grid, to_uint8
from facegan.device import resolve_device, resolve_precision
from facegan.errors import UserError
from facegan.io import atomic_dir
from facegan.training import checkpoint, distributed
from facegan.training.ada import AdaRule, AugmentPipe, update_p
from facegan.training.live import LiveLog
from facegan.training.phases import GanLoss, Phase, StepContext, blur_sigma, build_phases, lazy_interval, phase_loss
from facegan.training.progressive import Schedule, Segment, prepare_reals, to_resolution
from facegan.training.state import TermLog, TrainState

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model: str
    model_params: dict  # the model's section of params.yaml
    train: dict  # the `train` section
    seed: int
    resolution: int

    def identity(self, cache_fingerprint: str, dtype: torch.dtype) -> dict:
        """What defines this run, and so its checkpoint key: the params, the precision it resolved to (an
        `auto` run checkpointed in bf16 on a GPU never resumes in fp32 on a CPU), and its face cache."""
        return {
            "model": self.model,
            "params": self.model_params,
            "seed": self.seed,
            "resolution": self.resolution,
            "precision": str(dtype).replace("torch.", ""),
            "cache": cache_fingerprint,
        }


# ------------------------------------------------------------------------------------------------
# Pieces the loop composes (each tested on its own)


def ema_beta(model_params: dict, batch: int, nimg: int) -> float:
    """Per-step G EMA decay for a half-life of ema_kimg, ramped up to ema_rampup * nimg, where nimg
    counts the images before this step (official: step 0 copies G)."""
    half_life = model_params["ema_kimg"] * 1000
    if half_life <= 0:
        return 0.0
    if model_params["ema_rampup"] > 0:
        half_life = min(half_life, nimg * model_params["ema_rampup"])
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema, G, beta: float, foreach: bool = True) -> None:
    """G_ema <- lerp(G, G_ema, beta) parameter by parameter (one multi-tensor kernel with `foreach`);
    buffers are copied, as the official training loop does."""
    ema_params, params = list(G_ema.parameters()), [p.detach() for p in G.parameters()]
    if foreach:
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        buffers = list(G_ema.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(G.buffers()))
        return
    for p_ema, p in zip(ema_params, params):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def lazy_ratio(interval: int) -> float:
    """Adam's lr and betas for a network regularised every `interval` steps (StyleGAN2 appendix B)."""
    return interval / (interval + 1) if interval > 1 else 1.0


def lazy_adam(params, betas, interval: int, fused: bool = False) -> torch.optim.Adam:
    """Adam with betas ** ratio; the lr (times the ratio) is set by `enter_step` every step. `fused`: one
    kernel for the whole update (CUDA only)."""
    ratio = lazy_ratio(interval)
    return torch.optim.Adam(params, lr=0.0, betas=tuple(b**ratio for b in betas), eps=1e-8, fused=fused or None)


def learning_rates(segment: Segment, model_params: dict, nimg: int, total_nimg: int) -> tuple[float, float]:
    """(lr_g, lr_d) of a step: the segment's, times a linear decay to 0 over the last lr_decay_kimg."""
    decay = 1.0
    if model_params["lr_decay_kimg"] > 0:
        decay = min(max((total_nimg - nimg) / (model_params["lr_decay_kimg"] * 1000), 0.0), 1.0)
    return segment.lr_g * decay, segment.lr_d * decay


class NonFiniteError(UserError):
    """A loss or a weight became NaN or inf; the message names the step and the last good checkpoint."""


def non_finite_error(what: str, step: int, ckpt_dir: Path) -> NonFiniteError:
    last = checkpoint.latest(ckpt_dir)
    where = f"last good checkpoint: {last}" if last else "no checkpoint written yet"
    return NonFiniteError(
        f"{what} is not finite at step {step} ({where}); lower the learning rate or use "
        f"train.precision=fp32, then re-run to resume from that checkpoint"
    )


def budget_spent(train_seconds: float, budget_minutes: float, world: distributed.World) -> bool:
    """Whether the training time is past train.budget_minutes, as every rank decides it together (their
    clocks differ a little; rank 0's says)."""
    if budget_minutes <= 0:
        return False
    spent = torch.tensor(float(train_seconds >= budget_minutes * 60) if world.is_main else 0.0)
    return bool(world.all_mean(spent).item() > 0)


def kernel_fallbacks() -> dict[str, str]:
    """Custom ops whose Triton kernel failed in this process and fell back to the reference path.

    Read through sys.modules: a model that never loads facegan.ops (DCGAN) has none, and its
    training does not depend on the ops' code."""
    ops = sys.modules.get("facegan.ops")
    return ops.fallbacks() if ops is not None else {}


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 65_537 + rank) % (2**62)


def step_draws(
    seed: int,
    step: int,
    batch: int,
    dataset_size: int,
    z_dim: int,
    xflip: bool,
    phases: list[Phase],
    latents: str = "per_phase",
) -> dict:
    """Every random input of one step for the global batch, from a (seed, step) generator: reals'
    indices and flips, the latents (`per_phase`: a batch per phase, as NVlabs' loop; `per_step`: one
    batch every phase reuses, as PyTorch's DCGAN example, whose G step scores D's fakes), WGAN-GP weights."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    draws = {"idx": torch.randint(dataset_size, (batch,), generator=gen)}
    flips = torch.rand(batch, generator=gen) < 0.5
    draws["flips"] = flips if xflip else None
    if latents == "per_step":
        z = torch.randn(batch, z_dim, generator=gen)
        draws["z"] = {phase.name: z for phase in phases}
    else:
        draws["z"] = {phase.name: torch.randn(batch, z_dim, generator=gen) for phase in phases}
    draws["gp_eps"] = torch.rand(batch, generator=gen)
    return draws


def run_phase(
    state: TrainState,
    phase: Phase,
    z: torch.Tensor,
    real: torch.Tensor,
    ctx: StepContext,
    world: distributed.World,
    autocast,
    grad_clip_d: float,
) -> dict[str, torch.Tensor]:
    """One phase: its loss terms, backward, gradients averaged over ranks, its optimizer's step."""
    net, opt = (state.G, state.opt_G) if phase.net == "G" else (state.D, state.opt_D)
    state.G.requires_grad_(phase.net == "G")
    state.D.requires_grad_(phase.net == "D")
    opt.zero_grad(set_to_none=True)
    with autocast:
        terms = state.loss.phase_terms(phase, z, real, ctx)
    state.scaler.scale(phase_loss(phase, terms)).backward()
    world.average_gradients(net)
    if phase.net == "D" and phase.main and grad_clip_d > 0:  # StyleSwin: D's main step only
        state.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip_d)
    state.scaler.step(opt)
    state.scaler.update()
    return {name: value.detach() for name, value in terms.items()}


# ------------------------------------------------------------------------------------------------
# Set-up and the files a run writes


def build_state(
    cfg: RunConfig,
    spec: models.ModelSpec,
    phases: list[Phase],
    device: torch.device,
    dtype: torch.dtype,
    world: distributed.World,
) -> TrainState:
    mp, speed = cfg.model_params, cfg.train["speed"]
    if speed["compile"] == "cudagraphs" and device.type != "cuda":
        raise UserError(
            f"train.speed.compile=cudagraphs needs a CUDA device, training runs on {device.type}: "
            "set train.speed.compile to default or none"
        )
    G, D = models.build(cfg.model, mp["arch"], cfg.resolution)
    G, D = G.to(device).train(), D.to(device).train()
    if speed["channels_last"]:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    fused = speed["fused_adam"] and device.type == "cuda"
    world.broadcast_module(G), world.broadcast_module(D)
    augment = mp["augment"]
    pipe = None if augment["mode"] == "none" else AugmentPipe(p=augment["p"]).to(device)
    return TrainState(
        G=G,
        D=D,
        G_ema=copy.deepcopy(G).eval().requires_grad_(False),
        opt_G=lazy_adam(G.parameters(), mp["betas_g"], lazy_interval(phases, "G"), fused),
        opt_D=lazy_adam(D.parameters(), mp["betas_d"], lazy_interval(phases, "D"), fused),
        scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16),
        loss=GanLoss(
            G,
            D,
            spec.style_based,
            spec.progressive,
            mp["loss"],
            world.all_mean,
            speed["compile"],
            data_space=spec.data_space,
            augment_pipe=pipe,
        ),
    )


def check_config(cfg: RunConfig, spec: models.ModelSpec, schedule: Schedule, world: distributed.World) -> None:
    mp = cfg.model_params
    if mp["loss"]["pl_weight"] > 0 and not spec.style_based:
        raise UserError(f"models.{cfg.model}.loss.pl_weight needs a style-based generator: set it to 0")
    if mp["loss"]["style_mixing_prob"] > 0 and not spec.style_based:
        raise UserError(f"models.{cfg.model}.loss.style_mixing_prob needs a style-based generator: set it to 0")
    if mp["arch"].get("config") == "r" and mp["loss"]["blur_init_sigma"] == 0:
        log.warning(
            "models.%s.arch.config=r without the official D blur: set loss.blur_init_sigma=10 and "
            "loss.blur_fade_kimg=batch*200/32",
            cfg.model,
        )
    for segment in schedule.segments:
        if segment.batch_size % world.size:
            raise UserError(
                f"batch size {segment.batch_size} of segment {segment.name} does not split over {world.size} "
                f"processes: make models.{cfg.model} batch sizes multiples of {world.size}"
            )


class RunFiles:
    """What a run writes: checkpoints, snapshots and grids go to its scratch folder (which survives
    DVC deleting run_dir before a re-run); at the end they move into run_dir. Only rank 0 writes."""

    def __init__(
        self,
        cfg: RunConfig,
        cache: FaceCache,
        ckpt_root: Path,
        run_dir: Path,
        world: distributed.World,
        total_nimg: int,
        dtype: torch.dtype,
    ):
        self.dir = checkpoint.checkpoint_dir(cfg.model, cfg.identity(cache.fingerprint, dtype), ckpt_root)
        self.model, self.z_dim = cfg.model, cfg.model_params["arch"]["z_dim"]
        self.run_dir, self.world, self.train, self.total_nimg = run_dir, world, cfg.train, total_nimg
        self.grid_z = torch.randn(
            cfg.train["grid_size"] ** 2,
            cfg.model_params["arch"]["z_dim"],
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
        return self.crossed(before, after, self.train["checkpoint_kimg"]) or after >= stop_nimg

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
        nimg, tp = state.nimg, self.train
        if self.crossed(before, nimg, tp["sample_kimg"]) or level_done or final:
            with torch.no_grad():
                G_ema = self.ready_to_sample(state)
                images = to_resolution(
                    G_ema(self.grid_z.to(next(G_ema.parameters()).device)).float(), segment.resolution
                )
            name = f"res{segment.resolution:04d}_kimg{nimg / 1000:08.2f}.png"
            save_grid(to_uint8(images), self.dir / "samples" / name, tp["grid_size"])
        # a snapshot at the end of every resolution too: FID per resolution for growing models
        if (
            self.crossed(before, nimg, tp["snapshot_kimg"])
            or nimg >= self.total_nimg
            or final
            or (level_done and tp["snapshot_level_ends"])
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
        augment=cfg.model_params["augment"]["mode"],
        augment_p=augment_p(state),
        xflip=cfg.model_params["xflip"],
        data_space=spec.data_space.name,
        ema_kimg=cfg.model_params["ema_kimg"],
        batchnorm="re-estimated" if batchnorm_layers(state.G_ema) else "none",
        stopped_by=stopped_by,
        budget_minutes=cfg.train["budget_minutes"],
    )


# ------------------------------------------------------------------------------------------------


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
        cfg: RunConfig,
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


def set_up_torch(cfg: RunConfig, spec: models.ModelSpec) -> tuple[distributed.World, torch.device, torch.dtype]:
    world = distributed.init_from_env(cfg.train["device"])
    device = distributed.device_for(world, resolve_device(cfg.train["device"]))
    torch.manual_seed(cfg.seed), np.random.seed(cfg.seed), random.seed(cfg.seed)
    if cfg.train["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train["deterministic"]
    return world, device, resolve_precision(cfg.train["precision"], device, spec.official_precision)


def enter_step(
    state: TrainState,
    schedule: Schedule,
    spec: models.ModelSpec,
    model_params: dict,
    lazy: dict[str, float],
    device: torch.device,
) -> tuple[Segment, float]:
    """The step's segment and alpha, with the networks' level and the optimizers' lr set for it."""
    segment = schedule.segment_at(state.nimg)
    if segment.index != state.segment_index:  # entering a segment: a growing model's new block
        reset = spec.progressive and model_params["progressive"]["reset_optimizer"]
        previous = schedule.segments[state.segment_index] if state.segment_index >= 0 else None
        if reset and previous is not None and new_level_of_detail(previous, segment):
            state.opt_G.state.clear(), state.opt_D.state.clear()
        state.segment_index = segment.index
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
    alpha = segment.alpha(state.nimg)
    if spec.progressive:
        for net in state.networks().values():
            net.set_progress(segment.level, alpha)
    lr_g, lr_d = learning_rates(segment, model_params, state.nimg, schedule.total_nimg)
    for opt, lr, ratio in ((state.opt_G, lr_g, lazy["G"]), (state.opt_D, lr_d, lazy["D"])):
        for group in opt.param_groups:
            group["lr"] = lr * ratio
    return segment, alpha


def new_level_of_detail(previous: Segment, segment: Segment) -> bool:
    """Whether Adam's moments start afresh between two segments: the official reset_opt_for_new_lod
    resets whenever floor(lod) or ceil(lod) changes (PGGAN train.py:222, StyleGAN
    training/training_loop.py:223), which is where a fade-in starts and where it ends."""
    return segment.fade or previous.fade


def ada_rule(augment: dict) -> AdaRule | None:
    """The adaptive p's rule of a model's `augment` params (None unless mode is ada)."""
    if augment["mode"] != "ada":
        return None
    return AdaRule(target=augment["target"], interval=augment["interval"], kimg=augment["kimg"])


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


def train(
    cfg: RunConfig,
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
    schedule = Schedule.for_model(cfg.model, cfg.model_params, int(np.log2(cfg.resolution)) - 2, spec.progressive)
    check_config(cfg, spec, schedule, world)
    files = RunFiles(cfg, cache, ckpt_root, run_dir, world, schedule.total_nimg, dtype)
    with files.lock():
        return train_locked(cfg, cache, spec, schedule, files, world, device, dtype, stop_after_kimg, live_dir)


@dataclass
class StepOutcome:
    """What one step did: where in the schedule it ran, its batch, its loss terms and its time."""

    segment: Segment
    alpha: float
    batch: int
    terms: dict[str, torch.Tensor]
    seconds: float


@dataclass
class StepRunner:
    """One training step, everything the loop fixes for the whole run bound once. `run` is the step:
    the schedule's segment and lr, the step's draws, the reals, every phase due, the G EMA and ADA's
    p; tests/test_golden.py runs it against the official training loops."""

    cfg: RunConfig
    spec: models.ModelSpec
    schedule: Schedule
    phases: list[Phase]
    cache: FaceCache
    world: distributed.World
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self):
        self.lazy = {net: lazy_ratio(lazy_interval(self.phases, net)) for net in ("G", "D")}
        self.ada = ada_rule(self.cfg.model_params["augment"])
        self.autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def reals(self, draws: dict, segment: Segment, alpha: float) -> torch.Tensor:
        """This rank's share of the step's real faces, flipped as drawn, at the segment's resolution."""
        flips = None if draws["flips"] is None else self.world.shard(draws["flips"])
        images = self.cache.batch(self.world.shard(draws["idx"]).numpy(), self.device, flips)
        real = prepare_reals(images, segment.resolution, alpha)
        if self.cfg.train["speed"]["channels_last"]:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def run(self, state: TrainState) -> StepOutcome:
        cfg, mp, world = self.cfg, self.cfg.model_params, self.world
        t0 = time.perf_counter()
        segment, alpha = enter_step(state, self.schedule, self.spec, mp, self.lazy, self.device)
        batch = segment.batch_size
        draws = step_draws(
            cfg.seed,
            state.step,
            batch,
            len(self.cache),
            mp["arch"]["z_dim"],
            mp["xflip"],
            self.phases,
            mp["loss"]["latents"],
        )
        torch.manual_seed(step_seed(cfg.seed, state.step, world.rank + 1))  # the models' noise, mixing, augmentation
        real = self.reals(draws, segment, alpha)
        ctx = StepContext(segment.resolution, blur_sigma(mp["loss"], state.nimg), world.shard(draws["gp_eps"]))
        terms = {}
        for phase in self.phases:
            if phase.runs_at(state.step):
                z = world.shard(draws["z"][phase.name]).to(self.device)
                terms.update(run_phase(state, phase, z, real, ctx, world, self.autocast, mp["grad_clip_d"]))
        update_ema(state.G_ema, state.G, ema_beta(mp, batch, state.nimg), cfg.train["speed"]["foreach_ema"])
        seconds = time.perf_counter() - t0
        state.account(segment.name, batch, seconds, self.device)
        if self.ada is not None and state.step % self.ada.interval == 0:  # after every interval-th step (official)
            update_p(state.loss.augment_pipe, self.ada, state.loss.real_signs, batch, world.all_mean)
        return StepOutcome(segment, alpha, batch, terms, seconds)


def train_locked(
    cfg: RunConfig,
    cache: FaceCache,
    spec: models.ModelSpec,
    schedule: Schedule,
    files: RunFiles,
    world: distributed.World,
    device: torch.device,
    dtype: torch.dtype,
    stop_after_kimg: float | None,
    live_dir: Path | None,
) -> handoff.TrainedRun | None:
    """The training itself, holding the run's lock: resume, steps, outputs (see `train`)."""
    tp = cfg.train
    phases = build_phases(cfg.model_params["loss"])
    state = build_state(cfg, spec, phases, device, dtype, world)
    resume = checkpoint.latest(files.dir)
    if resume is not None:
        state.restore(checkpoint.load(resume), device)
        if world.is_main:
            log.info("resuming %s from %s at %.2f kimg", cfg.model, resume, state.nimg / 1000)
    progress = Progress(
        cfg, schedule, phases, state, LiveLog(live_dir if world.is_main else None, resume=bool(resume)), world
    )
    stop_nimg = min(schedule.total_nimg, round(stop_after_kimg * 1000)) if stop_after_kimg else schedule.total_nimg
    files.before_training(state, schedule.segments[0])

    check = TermCheck(world, files.dir)
    cache.to_device(device, tp["speed"]["cache_on_device"])
    step = StepRunner(cfg, spec, schedule, phases, cache, world, device, dtype)
    out_of_time = False
    while state.nimg < stop_nimg:
        before = state.nimg
        done = step.run(state)
        segment, alpha = done.segment, done.alpha
        check.add(state.step - 1, done.terms)
        progress.step(done.seconds, done.batch)

        level_done = state.nimg >= schedule.total_nimg or schedule.segment_at(state.nimg).level != segment.level
        checkpoint_due = files.checkpoint_due(before, state.nimg, stop_nimg)
        out_of_time = checkpoint_due and budget_spent(state.train_seconds, tp["budget_minutes"], world)
        log_due = files.crossed(before, state.nimg, tp["log_kimg"]) or state.nimg >= stop_nimg or level_done
        # the finiteness check syncs with the device: every check_every steps, and always before a
        # history row or a checkpoint, so that no checkpoint holds a run that has diverged
        if log_due or checkpoint_due or state.step % tp["speed"]["check_every"] == 0:
            progress.terms.add_terms(check.flush())
        if log_due or out_of_time:
            progress.row(state, segment, alpha, device)
            bad = state.first_non_finite()
            if bad is not None:
                raise non_finite_error(f"weight {bad}", state.step, files.dir)
        files.after_step(state, segment, alpha, before, stop_nimg, level_done, final=out_of_time)
        if out_of_time:  # train.budget_minutes: a finished run, at the first checkpoint past the budget
            break

    world.barrier()
    stats = None
    if state.nimg >= schedule.total_nimg or out_of_time:
        stopped_by = "budget" if state.nimg < schedule.total_nimg else "kimg"
        stats = trained_stats(
            cfg, spec, state, schedule, phases, world, device, dtype, progress.live, cache, stopped_by
        )
    progress.close(stats)
    if stats is not None and world.is_main:
        files.publish(state, stats, schedule.segment_at(state.nimg - 1))
    if stats is not None:
        distributed.shutdown(world)
    return stats
