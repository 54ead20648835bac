"""One training step, as the loop takes it: the step's segment and learning rates, its random draws, the
reals, every phase due (its loss, backward, gradient averaging and optimizer step), the G EMA and ADA's p.

`StepRunner.run` is the step; tests/test_golden.py runs it against the official training loops. The
pieces it composes (the EMA's beta, lazy Adam, the lr decay, the draws) are tested on their own in
tests/test_losses.py and tests/test_phases.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import models
from facegan import handoff, settings
from facegan.data.cache import FaceCache
from facegan.training import distributed
from facegan.training.ada import AdaRule, update_p
from facegan.training.cosine import cosine_values
from facegan.training.phases import Phase, StepContext, blur_sigma, lazy_interval, phase_loss
from facegan.training.progressive import Schedule, Segment, prepare_reals
from facegan.training.state import TrainState


def ema_beta(model_params: settings.ModelSettings, batch: int, nimg: int) -> float:
    """Per-step G EMA decay for a half-life of ema_kimg, ramped up to ema_rampup * nimg, where nimg
    counts the images before this step (official: step 0 copies G); R3GAN's half-life follows its cosine
    schedule from 0 (facegan.training.cosine)."""
    scheduled = cosine_values(model_params, nimg)
    if scheduled is not None:
        return 0.5 ** (batch / max(scheduled.ema_nimg, 1e-8))
    half_life = model_params.ema_kimg * 1000
    if half_life <= 0:
        return 0.0
    if model_params.ema_rampup > 0:
        half_life = min(half_life, nimg * model_params.ema_rampup)
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


def learning_rates(
    segment: Segment, model_params: settings.ModelSettings, nimg: int, total_nimg: int
) -> tuple[float, float]:
    """(lr_g, lr_d) of a step: the segment's, times a linear decay to 0 over the last lr_decay_kimg (R3GAN:
    its cosine schedule's)."""
    scheduled = cosine_values(model_params, nimg)
    if scheduled is not None:
        return scheduled.lr_g, scheduled.lr_d
    decay = 1.0
    if model_params.lr_decay_kimg > 0:
        decay = min(max((total_nimg - nimg) / (model_params.lr_decay_kimg * 1000), 0.0), 1.0)
    return segment.lr_g * decay, segment.lr_d * decay


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


def step_draws(
    seed: int,
    step: int,
    batch: int,
    dataset_size: int,
    z_dim: int,
    xflip: bool,
    phases: list[Phase],
    latents: str = "per_phase",
) -> StepDraws:
    """Every random input of one step for the global batch, from a (seed, step) generator: reals'
    indices and flips, the latents (`per_phase`: a batch per phase, as NVlabs' loop; `per_step`: one
    batch every phase reuses, as PyTorch's DCGAN example, whose G step scores D's fakes), WGAN-GP weights."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    idx = torch.randint(dataset_size, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5  # drawn without x-flips too, so the latents stay the same
    if latents == "per_step":
        shared = torch.randn(batch, z_dim, generator=gen)
        z = {phase.name: shared for phase in phases}
    else:
        z = {phase.name: torch.randn(batch, z_dim, generator=gen) for phase in phases}
    gp_eps = torch.rand(batch, generator=gen)
    # drawn last, so that every earlier draw is what it was before G's phases had reals of their own
    idx_g = torch.randint(dataset_size, (batch,), generator=gen)
    flips_g = torch.rand(batch, generator=gen) < 0.5
    return StepDraws(
        idx=idx, flips=flips if xflip else None, z=z, gp_eps=gp_eps, idx_g=idx_g, flips_g=flips_g if xflip else None
    )


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


def enter_step(
    state: TrainState,
    schedule: Schedule,
    spec: models.ModelSpec,
    model_params: settings.ModelSettings,
    lazy: dict[str, float],
    device: torch.device,
) -> tuple[Segment, float]:
    """The step's segment and alpha, with the networks' level and the optimizers' lr set for it."""
    segment = schedule.segment_at(state.nimg)
    if segment.index != state.segment_index:  # entering a segment: a growing model's new block
        reset = spec.progressive and model_params.progressive.reset_optimizer
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
    scheduled = cosine_values(model_params, state.nimg)
    if scheduled is not None:  # R3GAN: Adam's beta2 and the augmentation's p follow the cosine too
        for opt, beta2 in ((state.opt_G, scheduled.beta2_g), (state.opt_D, scheduled.beta2_d)):
            for group in opt.param_groups:
                group["betas"] = (group["betas"][0], beta2)
        if state.loss.augment_pipe is not None:
            state.loss.augment_pipe.p.fill_(scheduled.augment_p)
    return segment, alpha


def r1_gamma_at(model_params: settings.ModelSettings, nimg: int) -> float:
    """R1's (and R2's) gamma of a step: loss.r1_gamma, or R3GAN's cosine schedule from it."""
    scheduled = cosine_values(model_params, nimg)
    return model_params.loss.r1_gamma if scheduled is None else scheduled.r1_gamma


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


@dataclass
class StepRunner:
    """One training step, everything the loop fixes for the whole run bound once. `run` is the step:
    the schedule's segment and lr, the step's draws, the reals, every phase due, the G EMA and ADA's
    p; tests/test_golden.py runs it against the official training loops."""

    cfg: handoff.ModelView
    spec: models.ModelSpec
    schedule: Schedule
    phases: list[Phase]
    cache: FaceCache
    world: distributed.World
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self):
        self.lazy = {net: lazy_ratio(lazy_interval(self.phases, net)) for net in ("G", "D")}
        self.ada = ada_rule(self.cfg.params.augment)
        self.autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def reals(self, idx: torch.Tensor, flips: torch.Tensor | None, segment: Segment, alpha: float) -> torch.Tensor:
        """This rank's share of a batch of real faces, flipped as drawn, at the segment's resolution."""
        flips = None if flips is None else self.world.shard(flips)
        images = self.cache.batch(self.world.shard(idx).numpy(), self.device, flips)
        real = prepare_reals(images, segment.resolution, alpha)
        if self.cfg.train.speed.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def run(self, state: TrainState) -> StepOutcome:
        cfg, model_params, world = self.cfg, self.cfg.params, self.world
        t0 = time.perf_counter()
        segment, alpha = enter_step(state, self.schedule, self.spec, model_params, self.lazy, self.device)
        batch = segment.batch_size
        draws = step_draws(
            cfg.seed,
            state.step,
            batch,
            len(self.cache),
            model_params.arch.z_dim,
            model_params.xflip,
            self.phases,
            model_params.loss.latents,
        )
        torch.manual_seed(step_seed(cfg.seed, state.step, world.rank + 1))  # the models' noise, mixing, augmentation
        real = self.reals(draws.idx, draws.flips, segment, alpha)
        # a relativistic G loss scores reals too: its own batch, as the official R3GAN loop fetches one per phase
        real_g = self.reals(draws.idx_g, draws.flips_g, segment, alpha) if model_params.loss.type == "rpgan" else real
        ctx = StepContext(
            segment.resolution,
            blur_sigma(model_params.loss, state.nimg),
            world.shard(draws.gp_eps),
            r1_gamma_at(model_params, state.nimg),
        )
        terms = {}
        for phase in self.phases:
            if phase.runs_at(state.step):
                z = world.shard(draws.z[phase.name]).to(self.device)
                reals = real_g if phase.net == "G" else real
                terms.update(run_phase(state, phase, z, reals, ctx, world, self.autocast, model_params.grad_clip_d))
        update_ema(state.G_ema, state.G, ema_beta(model_params, batch, state.nimg), cfg.train.speed.foreach_ema)
        seconds = time.perf_counter() - t0
        state.account(segment.name, batch, seconds, self.device)
        if self.ada is not None and state.step % self.ada.interval == 0:  # after every interval-th step (official)
            update_p(state.loss.augment_pipe, self.ada, state.loss.real_signs, batch, world.all_mean)
        return StepOutcome(segment, alpha, batch, terms, seconds)
