"""One training step, as the loop takes it: the step's values (facegan.training.values: lr, betas, gamma,
EMA, p, blur), its random draws, the reals, every phase due (its loss, backward, gradient averaging and
optimizer step), the G EMA and ADA's p.

`StepRunner.run` is the step; tests/test_golden.py runs it against the official training loops. The
pieces it composes (the values, the draws, the EMA update) are tested on their own in
tests/test_losses.py and tests/test_phases.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from facegan import settings
from facegan.data.cache import FaceCache
from facegan.training.ada import AdaRule, update_p
from facegan.training.context import RunContext
from facegan.training.loss import StepContext, lazy_ratio
from facegan.training.phases import Phase, lazy_interval
from facegan.training.progressive import Segment, prepare_reals
from facegan.training.state import TrainState
from facegan.training.values import StepSchedule, StepValues


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


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 65_537 + rank) % (2**62)


@dataclass(frozen=True)
class StepDraws:
    """Every random input of one step, for the global batch (each process takes its shard)."""

    idx: torch.Tensor  # (batch,) indices of the reals in the face cache
    flips: torch.Tensor | None  # (batch,) bool, which reals are mirrored; None without x-flips
    z: dict[str, torch.Tensor]  # phase name -> (batch, z_dim) latents
    gp_eps: torch.Tensor  # (batch,) WGAN-GP's interpolation weights
    idx_g: torch.Tensor  # (batch,) the reals of G's phases (a relativistic G loss scores reals too)
    flips_g: torch.Tensor | None


@dataclass(frozen=True)
class DrawSpec:
    """What a step's draws look like: the latents' width, whether reals are mirrored, and how the phases
    share latents (`per_phase`: a batch per phase, as NVlabs' loop; `per_step`: one batch every phase
    reuses, as PyTorch's DCGAN example, whose G step scores D's fakes)."""

    z_dim: int
    xflip: bool
    latents: str = "per_phase"

    @classmethod
    def of(cls, model_params: settings.ModelSettings) -> DrawSpec:
        return cls(model_params.arch.z_dim, model_params.xflip, model_params.loss.latents)


def step_draws(seed: int, step: int, batch: int, dataset_size: int, phases: list[Phase], spec: DrawSpec) -> StepDraws:
    """Every random input of one step for the global batch, from a (seed, step) generator: reals'
    indices and flips, the latents, WGAN-GP weights."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    idx = torch.randint(dataset_size, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5  # drawn without x-flips too, so the latents stay the same
    if spec.latents == "per_step":
        shared = torch.randn(batch, spec.z_dim, generator=gen)
        z = {phase.name: shared for phase in phases}
    else:
        z = {phase.name: torch.randn(batch, spec.z_dim, generator=gen) for phase in phases}
    gp_eps = torch.rand(batch, generator=gen)
    # drawn last, so that every earlier draw is what it was before G's phases had reals of their own
    idx_g = torch.randint(dataset_size, (batch,), generator=gen)
    flips_g = torch.rand(batch, generator=gen) < 0.5
    return StepDraws(
        idx=idx,
        flips=flips if spec.xflip else None,
        z=z,
        gp_eps=gp_eps,
        idx_g=idx_g,
        flips_g=flips_g if spec.xflip else None,
    )


def enter_step(state: TrainState, values: StepValues, ctx: RunContext, lazy: dict[str, float]) -> tuple[Segment, float]:
    """The step's segment and alpha, with the networks' level and the optimizers' lr (and R3GAN's beta2 and
    augmentation p) set to this step's values."""
    segment, schedule = values.segment, ctx.schedule
    if segment.index != state.segment_index:  # entering a segment: a growing model's new block
        reset = ctx.spec.progressive and ctx.cfg.params.progressive.reset_optimizer
        previous = schedule.segments[state.segment_index] if state.segment_index >= 0 else None
        if reset and previous is not None and new_level_of_detail(previous, segment):
            state.opt_G.state.clear(), state.opt_D.state.clear()
        state.segment_index = segment.index
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
    alpha = segment.alpha(state.nimg)
    if ctx.spec.progressive:
        for net in state.networks().values():
            net.set_progress(segment.level, alpha)
    for opt, lr, ratio in ((state.opt_G, values.lr_g, lazy["G"]), (state.opt_D, values.lr_d, lazy["D"])):
        for group in opt.param_groups:
            group["lr"] = lr * ratio
    for opt, beta2 in ((state.opt_G, values.beta2_g), (state.opt_D, values.beta2_d)):
        if beta2 is not None:  # R3GAN: Adam's beta2 follows its cosine
            for group in opt.param_groups:
                group["betas"] = (group["betas"][0], beta2)
    if values.augment_p is not None and state.loss.augment_pipe is not None:  # R3GAN's p on its cosine
        state.loss.augment_pipe.p.fill_(values.augment_p)
    return segment, alpha


def new_level_of_detail(previous: Segment, segment: Segment) -> bool:
    """Whether Adam's moments start afresh between two segments: the official reset_opt_for_new_lod
    resets whenever floor(lod) or ceil(lod) changes (PGGAN train.py:222, StyleGAN
    training/training_loop.py:223), which is where a fade-in starts and where it ends."""
    return segment.fade or previous.fade


def ada_rule(augment: settings.AugmentSettings) -> AdaRule | None:
    """The adaptive p's rule of a model's `augment` params (None unless mode is ada)."""
    if augment.mode != "ada":
        return None
    return AdaRule(target=augment.target, interval=augment.interval, kimg=augment.kimg)


@dataclass
class StepOutcome:
    """What one step did: where in the schedule it ran, its batch, its loss terms and its time."""

    segment: Segment
    alpha: float
    batch: int
    terms: dict[str, torch.Tensor]
    seconds: float


class StepRunner:
    """One training step, everything the loop fixes for the whole run bound once. `run` is the step;
    tests/test_golden.py runs it against the official training loops."""

    def __init__(self, ctx: RunContext, cache: FaceCache | None):
        self.ctx, self.cache, self.cfg, self.spec = ctx, cache, ctx.cfg, ctx.spec
        self.values = StepSchedule(ctx.cfg.params, ctx.schedule)
        self.lazy = {net: lazy_ratio(lazy_interval(ctx.phases, net)) for net in ("G", "D")}
        self.ada = ada_rule(ctx.cfg.params.augment)
        self.draw_spec = DrawSpec.of(ctx.cfg.params)
        self.autocast = torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=ctx.dtype != torch.float32)

    def reals(self, idx: torch.Tensor, flips: torch.Tensor | None, segment: Segment, alpha: float) -> torch.Tensor:
        """This rank's share of a batch of real faces, flipped as drawn, at the segment's resolution."""
        world = self.ctx.world
        flips = None if flips is None else world.shard(flips)
        images = self.cache.batch(world.shard(idx).numpy(), self.ctx.device, flips)
        real = prepare_reals(images, segment.resolution, alpha)
        if self.cfg.train.speed.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def run_phase(
        self, state: TrainState, phase: Phase, z: torch.Tensor, real: torch.Tensor, step_ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """One phase: its loss, backward, gradients averaged over ranks, its optimizer's step."""
        net, opt = (state.G, state.opt_G) if phase.net == "G" else (state.D, state.opt_D)
        state.G.requires_grad_(phase.net == "G")
        state.D.requires_grad_(phase.net == "D")
        opt.zero_grad(set_to_none=True)
        with self.autocast:
            loss = state.loss.phase_loss(phase, z, real, step_ctx)
        state.scaler.scale(loss.total).backward()
        self.ctx.world.average_gradients(net)
        grad_clip_d = self.cfg.params.grad_clip_d
        if phase.net == "D" and phase.main and grad_clip_d > 0:  # StyleSwin: D's main step only
            state.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip_d)
        state.scaler.step(opt)
        state.scaler.update()
        return {name: value.detach() for name, value in loss.terms.items()}

    def run(self, state: TrainState) -> StepOutcome:
        ctx, model_params, world = self.ctx, self.cfg.params, self.ctx.world
        t0 = time.perf_counter()
        values = self.values.at(state.nimg)
        segment, alpha = enter_step(state, values, ctx, self.lazy)
        batch = segment.batch_size
        draws = step_draws(self.cfg.seed, state.step, batch, len(self.cache), ctx.phases, self.draw_spec)
        torch.manual_seed(step_seed(self.cfg.seed, state.step, world.rank + 1))  # models' noise, mixing, augmentation
        real = self.reals(draws.idx, draws.flips, segment, alpha)
        # a relativistic G loss scores reals too: its own batch, as the official R3GAN loop fetches one per phase
        real_g = self.reals(draws.idx_g, draws.flips_g, segment, alpha) if model_params.loss.type == "rpgan" else real
        step_ctx = StepContext(segment.resolution, values.blur_sigma, world.shard(draws.gp_eps), values.r1_gamma)
        terms = {}
        for phase in ctx.phases:
            if phase.runs_at(state.step):
                z = world.shard(draws.z[phase.name]).to(ctx.device)
                terms.update(self.run_phase(state, phase, z, real_g if phase.net == "G" else real, step_ctx))
        update_ema(state.G_ema, state.G, values.ema_beta, self.cfg.train.speed.foreach_ema)
        seconds = time.perf_counter() - t0
        state.account(segment.name, batch, seconds, ctx.device)
        if self.ada is not None and state.step % self.ada.interval == 0:  # after every interval-th step (official)
            update_p(state.loss.augment_pipe, self.ada, state.loss.real_signs, batch, world.all_mean)
        return StepOutcome(segment, alpha, batch, terms, seconds)
