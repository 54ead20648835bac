"""Every loss of the study in one module: the adversarial losses and regularisers as formulas, and the
two loss families that combine them into each training phase's terms, as NVlabs' training/loss.py
keeps StyleGAN2Loss.

Formulas (`loss.type` in a model's params selects the adversarial one):
  ns       non-saturating logistic (Goodfellow et al. 2014): D: softplus(-real) + softplus(fake),
           G: softplus(-fake)
  wgan_gp  Wasserstein loss (Arjovsky et al. 2017) with gradient penalty (Gulrajani et al. 2017)
           and PGGAN's epsilon drift term  drift * real**2  (Karras et al. 2018)
  hinge    D: relu(1 - real) + relu(1 + fake), G: -fake (Lim & Ye 2017; Miyato et al. 2018)
  rpgan    relativistic pairing: D: softplus(-(real - fake)), G: softplus(-(fake - real)), with R1 on reals
           and R2 (the same penalty on fakes) at gamma/2 every step (R3GAN, Huang et al. 2024)
  r1_penalty        gamma/2 * ||grad_x D(x)||^2 on reals (Mescheder et al. 2018), from D's logits
                    of inputs that require grad, as the official StyleGAN2-ADA/3 loss computes it
  gradient_penalty  (||grad D(mix)|| - 1)^2 on real/fake interpolates (WGAN-GP)
  path_length       (||J_w^T y|| - a)^2 with a an EMA of the lengths (Karras et al. 2020)
  balanced_consistency  ||D(aug(x)) - D(x)||^2 for reals and fakes (bCR, Zhao et al. 2021, as StyleSwin uses it)

Families (`build_loss`): `NvlabsLoss` (ns, hinge, WGAN-GP with drift, bCR, R1, path length: every model
but R3GAN) and `RelativisticLoss` (R3GAN's rpgan with R1 and R2). Both see G and D through
`NetworkPasses`, which holds torch.compile's graphs (train.speed.compile) so that the loss never does.
A phase's terms come back by name (facegan/training/terms.py: what train_stats.json and dvclive log)
with the total it backpropagates (`PhaseLoss`). A lazy regulariser (StyleGAN2's R1 every 16 steps, its
path length every 4) is one block: its formula, its weight and its gain, the interval it runs at, as
in NVlabs' Dreg/Greg; its Adam correction (StyleGAN2 appendix B) is `lazy_adam` below.

Also here, as in the official loss: style mixing in `run_G` (a crossover among the layers the
generator's current level uses, so StyleGAN's growing phases mix only active layers; the second
latent batch is mapped on every call, as the official run_G does), StyleGAN3-R's Gaussian blur of
every image D sees, then ADA's augmentation (facegan/training/ada.py) of every image D sees, reals of
R1 included. D's inputs are in the model's data space (`models.ModelSpec.data_space`: reals and fakes
move there before D, so that R1 and bCR work in the official units). Every random draw of a phase
comes from torch's global generator in the official order (Dmain: fakes, then reals; bCR: reals'
augmentation, then fakes', D on the augmented fakes first), so that the same random state gives the
official phase's numbers (tests/test_golden.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import models
from facegan import settings
from facegan.training import bcr
from facegan.training.ada import AugmentPipe, SignTally
from facegan.training.phases import Phase
from facegan.training.progressive import to_resolution
from facegan.training.terms import (
    D_ADVERSARIAL,
    D_CONSISTENCY,
    D_DRIFT,
    D_GRADIENT_PENALTY,
    D_R1,
    D_R2,
    G_ADVERSARIAL,
    G_PATH_LENGTH,
)
from models import DataSpace

# ------------------------------------------------------------------------------------------------
# formulas

PL_BATCH_SHRINK = 2  # the path-length batch is this fraction of the G batch (official pl_batch_shrink)
PL_DECAY = 0.01  # EMA decay of the path-length target a (official pl_decay)


def d_adversarial(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "wgan_gp":
        return fake_logits.mean() - real_logits.mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown loss type {kind}")


def g_adversarial(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    if kind in ("wgan_gp", "hinge"):
        return -fake_logits.mean()
    raise ValueError(f"unknown loss type {kind}")


def relativistic(first_logits: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
    """RpGAN (Jolicoeur-Martineau 2019, as R3GAN trains): softplus(-(first - second)), paired per sample;
    D passes (real, fake), G passes (fake, real)."""
    return F.softplus(-(first_logits - second_logits)).mean()


def drift_penalty(real_logits: torch.Tensor, weight: float) -> torch.Tensor:
    return weight * real_logits.square().mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * E||grad_x D(x)||^2; `real` must require grad and `real_logits` be D(real). Given fakes and
    their logits, the same function is R2."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().square().flatten(1).sum(1).mean()


def gradient_penalty(
    run_D: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float,
    eps: torch.Tensor,
) -> torch.Tensor:
    """weight * E(||grad D(x_hat)|| - 1)^2 with x_hat = eps real + (1 - eps) fake, eps ~ U(0, 1) per
    sample (the loop draws eps, so that a data-parallel run uses the same ones as one process)."""
    eps = eps.to(real.device, real.dtype).view(-1, 1, 1, 1)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(run_D(mixed).float().sum(), mixed, create_graph=True)
    return weight * (grad.float().flatten(1).norm(dim=1) - 1).square().mean()


def path_length(
    images: torch.Tensor, ws: torch.Tensor, pl_mean: torch.Tensor, all_mean: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty E(|J_w^T y| - a)^2, the updated target a): y is Gaussian noise scaled by 1/sqrt(H W),
    a the EMA of the mean length. As in the official loss, the penalty differentiates through this step's
    share of a (PL_DECAY times the batch's mean length: only the stored a is detached). The mean is
    averaged over data-parallel ranks so that N ranks keep one a; its gradient is this rank's mean's."""
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.float().square().sum(2).mean(1).sqrt()
    local = lengths.mean()
    batch_mean = local + (all_mean(local.detach()) - local.detach())  # value: every rank's; gradient: this rank's
    target = pl_mean.to(lengths.device).lerp(batch_mean, PL_DECAY)
    return (lengths - target).square().mean(), target


def balanced_consistency(
    run_D: Callable[[torch.Tensor], torch.Tensor],
    real: tuple[torch.Tensor, torch.Tensor, float],
    fake: tuple[torch.Tensor, torch.Tensor, float],
    augment: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """bCR: lambda_real ||D(aug(real)) - D(real)||^2 + lambda_fake ||D(aug(fake)) - D(fake)||^2 (means over
    the batch; gradients reach both logits, as MSELoss gives them in the official code). Each side is
    (images, their logits, lambda). Order as StyleSwin's train_styleswin.py: both batches augmented (reals
    first), then D on the augmented fakes, then on the augmented reals."""
    (real_images, real_logits, real_lambda), (fake_images, fake_logits, fake_lambda) = real, fake
    real_aug, fake_aug = augment(real_images), augment(fake_images)
    fake_aug_logits, real_aug_logits = run_D(fake_aug).float(), run_D(real_aug).float()
    return fake_lambda * F.mse_loss(fake_aug_logits, fake_logits.float()) + real_lambda * F.mse_loss(
        real_aug_logits, real_logits.float()
    )


# ------------------------------------------------------------------------------------------------
# the passes through G and D


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur with taps exp2(-(x/sigma)^2) for |x| <= floor(3 sigma), normalised, zero padding
    (the official filter2d of the StyleGAN3 loss); sigma below 1/3 px leaves the images as they are."""
    size = math.floor(sigma * 3)
    if size <= 0:
        return images
    taps = torch.arange(-size, size + 1, device=images.device, dtype=torch.float32).div(sigma).square().neg().exp2()
    taps = (taps / taps.sum()).to(images.dtype)
    n, c, h, w = images.shape
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(x, taps.view(1, 1, -1, 1), padding=(size, 0))
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, size))
    return x.reshape(n, c, h, w)


def mixing_cutoff(num_active: int, num_ws: int, prob: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Style-mixing crossover (a 0-d int64 tensor on `device`): with probability `prob` a layer index in
    [1, num_active), else num_ws (no mixing). Drawn from torch's generator of `device`, which the loop
    seeds per step, as the official loss draws it: the index first, then the coin, both on every call,
    without a host sync."""
    cutoff = torch.empty([], dtype=torch.int64, device=device).random_(1, num_active)
    return torch.where(torch.rand([], device=device) < prob, cutoff, torch.full_like(cutoff, num_ws))


@dataclass(frozen=True)
class StepContext:
    """What a phase needs to know about where training is (facegan.training.values.StepValues gives the
    scheduled numbers)."""

    resolution: int  # the current level's (growing models) or the final resolution
    blur_sigma: float
    gp_eps: torch.Tensor | None  # WGAN-GP mixing weights of this rank's samples
    r1_gamma: float  # R1's (and R2's) weight this step: loss.r1_gamma, or R3GAN's cosine schedule of it


class NetworkPasses:
    """G and D as the loss calls them: compiled graphs for the first-order passes (train.speed.compile),
    the modules themselves where a regulariser differentiates its gradient (R1, WGAN-GP, path length),
    which compiled graphs cannot. `cudagraphs` is torch.compile's reduce-overhead mode, which replays the
    compiled graphs as CUDA graphs (re-recorded per input shape: one set per resolution of a growing model)."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, style_based: bool, compile: str = "none"):
        parts = {"G": G, "D": D, **({"mapping": G.mapping, "synthesis": G.synthesis} if style_based else {})}
        self.eager = parts
        self.cuda_graphs = compile == "cudagraphs"
        if compile == "none":
            self.fast = parts
        else:
            mode = "reduce-overhead" if self.cuda_graphs else "default"
            self.fast = {name: torch.compile(net, mode=mode) for name, net in parts.items()}

    def of(self, fast: bool) -> dict[str, torch.nn.Module]:
        return self.fast if fast else self.eager

    def begin_phase(self) -> None:
        if self.cuda_graphs:  # a phase runs forward and backward to the end: its graphs' outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()


@dataclass
class PhaseLoss:
    """One phase's loss terms by name (as logged: a lazy regulariser before its gain) and the total the
    phase backpropagates."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor | float = 0

    def add(self, name: str, value: torch.Tensor, gain: float = 1) -> None:
        self.terms[name] = value
        self.total = self.total + value * gain


class GanLoss:
    """G's and D's passes as every loss family makes them (the official StyleGAN2Loss.run_G / run_D), and
    the state a loss carries across steps: the path-length target, ADA's pipe and its tally of D's signs."""

    def __init__(
        self,
        passes: NetworkPasses,
        spec: models.ModelSpec,  # style_based, progressive, data_space
        loss: settings.LossSettings,
        all_mean: Callable[[torch.Tensor], torch.Tensor],  # mean over data-parallel ranks (identity in one process)
        augment_pipe: AugmentPipe | None = None,  # ADA's pipe (None: no augmentation of D's inputs)
    ):
        self.passes, self.loss, self.all_mean = passes, loss, all_mean
        self.G = passes.eager["G"]
        self.style_based, self.progressive = spec.style_based, spec.progressive
        self.data_space: DataSpace = spec.data_space  # where D works
        self.augment_pipe = augment_pipe
        self.pl_mean = torch.zeros([])  # path-length target a (checkpointed)
        self.real_signs = SignTally()  # sign(D(real)) since the last ADA update (used when the pipe adapts)

    def run_G(
        self, z: torch.Tensor, ctx: StepContext, update_emas: bool = False, return_ws: bool = False, fast: bool = True
    ):
        """Fakes at the current resolution in D's data space (and the ws they came from, for the path length)."""
        nets, ws = self.passes.of(fast), None
        if self.style_based:
            ws = nets["mapping"](z, update_emas=update_emas)
            num_active = self.G.num_active_ws if self.progressive else ws.shape[1]
            if self.loss.style_mixing_prob > 0 and num_active >= 2:
                cutoff = mixing_cutoff(num_active, ws.shape[1], self.loss.style_mixing_prob, ws.device)
                mixed = nets["mapping"](torch.randn_like(z), update_emas=False)  # drawn on every call (official)
                first = torch.arange(ws.shape[1], device=ws.device) < cutoff  # the layers that keep z's w
                ws = torch.where(first.view(1, -1, 1), ws, mixed)
            images = nets["synthesis"](ws, update_emas=update_emas)
        else:
            images = nets["G"](z)
        images = self.data_space.from_unit(to_resolution(images, ctx.resolution))
        return (images, ws) if return_ws else images

    def run_D(self, images: torch.Tensor, ctx: StepContext, fast: bool = True) -> torch.Tensor:
        """D's logits of images in its data space: blurred (StyleGAN3-R), then augmented (ADA), as official run_D."""
        if ctx.blur_sigma > 0:  # in fp32, as the official filter2d of fp32 images
            with torch.autocast(images.device.type, enabled=False):
                images = gaussian_blur(images.float(), ctx.blur_sigma)
        if self.augment_pipe is not None:
            images = self.augment_pipe(images)
        return self.passes.of(fast)["D"](images).float()

    def reals_for_D(self, real: torch.Tensor, requires_grad: bool) -> torch.Tensor:
        return self.data_space.from_unit(real.detach()).requires_grad_(requires_grad)

    def phase_loss(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> PhaseLoss:
        """The loss of `phase` (scalars of this rank's samples)."""
        self.passes.begin_phase()
        return (self.g_loss if phase.net == "G" else self.d_loss)(phase, z, real, ctx)


class NvlabsLoss(GanLoss):
    """The loss of every model but R3GAN: ns, hinge or WGAN-GP (with PGGAN's drift), StyleSwin's bCR,
    StyleGAN's R1 and StyleGAN2's path length, each regulariser lazy where its interval is above 1."""

    def g_loss(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> PhaseLoss:
        out = PhaseLoss({})
        if phase.main:
            out.add(G_ADVERSARIAL, g_adversarial(self.loss.type, self.run_D(self.run_G(z, ctx), ctx)))
        if phase.reg:  # Greg: the path length on a shrunk batch, weight pl_weight, gain = its interval
            n = max(1, z.shape[0] // PL_BATCH_SHRINK)
            images, ws = self.run_G(z[:n], ctx, return_ws=True, fast=False)
            penalty, self.pl_mean = path_length(images, ws, self.pl_mean, self.all_mean)
            self.pl_mean = self.pl_mean.detach()
            out.add(G_PATH_LENGTH, penalty * self.loss.pl_weight, gain=phase.interval)
        return out

    def d_loss(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> PhaseLoss:
        cfg, out = self.loss, PhaseLoss({})
        if phase.main:  # the fakes first, as the official Dmain (their draws come first)
            fake = self.run_G(z, ctx, update_emas=True).detach()
            fake_logits = self.run_D(fake, ctx)
        real = self.reals_for_D(real, requires_grad=phase.reg)
        real_logits = self.run_D(real, ctx, fast=not phase.reg)
        self.real_signs.add(real_logits)  # ADA's statistic: every phase that shows D reals (official)
        if phase.main:
            out.add(D_ADVERSARIAL, d_adversarial(cfg.type, real_logits, fake_logits))
            if cfg.drift > 0:
                out.add(D_DRIFT, drift_penalty(real_logits, cfg.drift))
            if cfg.gp_weight > 0:
                run_D = lambda images: self.run_D(images, ctx, fast=False)
                out.add(D_GRADIENT_PENALTY, gradient_penalty(run_D, real, fake, cfg.gp_weight, ctx.gp_eps))
            if cfg.bcr_real_lambda > 0 or cfg.bcr_fake_lambda > 0:
                consistency = balanced_consistency(
                    lambda images: self.run_D(images, ctx),
                    (real.detach(), real_logits, cfg.bcr_real_lambda),
                    (fake, fake_logits, cfg.bcr_fake_lambda),
                    bcr.consistency_augment,
                )
                out.add(D_CONSISTENCY, consistency)
        if phase.reg:  # Dreg: R1 on the reals, weight gamma/2 (this step's gamma), gain = its interval
            out.add(D_R1, r1_penalty(real_logits, real, ctx.r1_gamma), gain=phase.interval)
        return out


class RelativisticLoss(GanLoss):
    """R3GAN's loss (R3GAN/Trainer.py): the relativistic pairing, with R1 on the reals and R2 on the fakes
    at gamma/2 on every step (so never lazy)."""

    def g_loss(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> PhaseLoss:
        """AccumulateGeneratorGradients: D scores the fakes, then the reals, and G lowers
        softplus(-(D(fake) - D(real)))."""
        fake_logits = self.run_D(self.run_G(z, ctx), ctx)
        real_logits = self.run_D(self.reals_for_D(real, requires_grad=False), ctx)
        out = PhaseLoss({})
        out.add(G_ADVERSARIAL, relativistic(fake_logits, real_logits))
        return out

    def d_loss(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> PhaseLoss:
        """AccumulateDiscriminatorGradients: softplus(-(D(real) - D(fake))) plus R1 and R2, each through the
        augmentation (reals scored first)."""
        real = self.reals_for_D(real, requires_grad=True)
        fake = self.run_G(z, ctx, update_emas=True).detach().requires_grad_(True)
        real_logits = self.run_D(real, ctx, fast=False)
        fake_logits = self.run_D(fake, ctx, fast=False)
        self.real_signs.add(real_logits)
        out = PhaseLoss({})
        out.add(D_ADVERSARIAL, relativistic(real_logits, fake_logits))
        out.add(D_R1, r1_penalty(real_logits, real, ctx.r1_gamma))
        out.add(D_R2, r1_penalty(fake_logits, fake, ctx.r1_gamma))
        return out


def build_loss(
    passes: NetworkPasses,
    spec: models.ModelSpec,
    loss: settings.LossSettings,
    all_mean: Callable[[torch.Tensor], torch.Tensor],
    augment_pipe: AugmentPipe | None = None,
) -> GanLoss:
    """The loss family of a model's `loss.type`."""
    family = RelativisticLoss if loss.type == "rpgan" else NvlabsLoss
    return family(passes, spec, loss, all_mean, augment_pipe)


# ------------------------------------------------------------------------------------------------
# lazy regularisation's optimizer (StyleGAN2 appendix B)


def lazy_ratio(interval: int) -> float:
    """Adam's lr and betas for a network regularised every `interval` steps (StyleGAN2 appendix B)."""
    return interval / (interval + 1) if interval > 1 else 1.0


def lazy_adam(params, betas, interval: int, fused: bool = False) -> torch.optim.Adam:
    """Adam with betas ** ratio; the lr (times the ratio) is set by the step every step. `fused`: one
    kernel for the whole update (CUDA only)."""
    ratio = lazy_ratio(interval)
    return torch.optim.Adam(params, lr=0.0, betas=tuple(b**ratio for b in betas), eps=1e-8, fused=fused or None)
