"""One training step as data: the phases Gmain, Greg, Dmain, Dreg of the official StyleGAN2-ADA /
StyleGAN3 loop (training/training_loop.py and training/loss.py there), generalised to every model.

Each phase updates one network with its own optimizer step:
  Gmain  G's adversarial loss on fakes of fresh latents
  Greg   the path-length penalty (StyleGAN2), every `pl_every` steps, its loss times the interval
  Dmain  D's adversarial loss on reals and fakes (+ drift, WGAN-GP, bCR where the model has them);
         the generator pass that makes these fakes is the only one that updates G's running
         statistics (w_avg, StyleGAN3's magnitude EMAs), once per step as the official update_emas
  Dreg   R1 on reals, every `r1_every` steps, its loss times the interval
A regulariser that runs every step (StyleGAN's R1) is folded into its main phase instead: Gboth /
Dboth, one optimizer step. The order of G and D phases is the model's official one
(`loss.phase_order`). Each phase draws its own latents (official: one z per phase).

`GanLoss.phase_terms` returns each phase's loss terms by name (the names below are what
train_stats.json and dvclive log); the loop backpropagates their sum, lazy terms times the
interval, and steps the phase's optimizer.

Also here, as in the official loss: style mixing in `run_G` (a crossover among the layers the
generator's current level uses, so StyleGAN's growing phases mix only active layers; the second
latent batch is mapped on every call, as the official run_G does), StyleGAN3-R's Gaussian blur of
every image D sees, fading out over `blur_fade_kimg`, then ADA's augmentation (facegan/training/ada.py)
of every image D sees, reals of R1 included. D's inputs are in the model's data space
(`models.ModelSpec.data_space`: reals and fakes move there before D, so that R1 and bCR work in the
official units). Every random draw of a phase comes from torch's global generator in the official
order (Dmain: fakes, then reals; bCR: reals' augmentation, then fakes', D on the augmented fakes
first), so that the same random state gives the official phase's numbers (tests/test_golden.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facegan import settings
from facegan.training import augment, losses
from facegan.training.ada import AugmentPipe, SignTally
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
    LAZY_TERMS,
)
from models import UNIT, DataSpace


@dataclass(frozen=True)
class Phase:
    name: str  # Gmain | Greg | Gboth | Dmain | Dreg | Dboth
    net: str  # "G" | "D": the network this phase updates
    interval: int  # runs on the steps where step % interval == 0
    main: bool  # computes the adversarial terms
    reg: bool  # computes the regulariser

    def runs_at(self, step: int) -> bool:
        return step % self.interval == 0


def _net_phases(net: str, regularised: bool, every: int) -> list[Phase]:
    if not regularised:
        return [Phase(f"{net}main", net, 1, True, False)]
    if every == 1:
        return [Phase(f"{net}both", net, 1, True, True)]
    return [Phase(f"{net}main", net, 1, True, False), Phase(f"{net}reg", net, every, False, True)]


def build_phases(loss: settings.LossSettings) -> list[Phase]:
    """The phases of a model's `loss` params, in its official order."""
    g = _net_phases("G", loss.pl_weight > 0, loss.pl_every)
    d = _net_phases("D", loss.r1_gamma > 0, loss.r1_every)
    return g + d if loss.phase_order == "GD" else d + g


def lazy_interval(phases: list[Phase], net: str) -> int:
    """The lazy regulariser's interval of `net` (1 when it has none): its Adam is rescaled by it."""
    return max((p.interval for p in phases if p.net == net and not p.main), default=1)


def blur_sigma(loss: settings.LossSettings, nimg: int) -> float:
    """StyleGAN3-R's D blur: blur_init_sigma px at the start, linearly to 0 at blur_fade_kimg."""
    if loss.blur_fade_kimg <= 0:
        return 0.0
    return max(1 - nimg / (loss.blur_fade_kimg * 1000), 0.0) * loss.blur_init_sigma


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


@dataclass
class StepContext:
    """What a phase needs to know about where training is."""

    resolution: int  # the current level's (growing models) or the final resolution
    blur_sigma: float
    gp_eps: torch.Tensor | None  # WGAN-GP mixing weights of this rank's samples
    r1_gamma: float  # R1's (and R2's) weight this step: loss.r1_gamma, or R3GAN's cosine schedule of it


class GanLoss:
    """One model's G and D passes and phase losses (the official StyleGAN2Loss, for every model)."""

    def __init__(
        self,
        G,
        D,
        style_based: bool,
        progressive: bool,
        loss: settings.LossSettings,
        all_mean: Callable[[torch.Tensor], torch.Tensor],
        compile: str = "none",
        data_space: DataSpace = UNIT,
        augment_pipe: AugmentPipe | None = None,
    ):
        self.G, self.D, self.loss = G, D, loss
        self.style_based, self.progressive = style_based, progressive
        self.all_mean = all_mean  # mean over data-parallel ranks (identity in one process)
        self.pl_mean = torch.zeros([])  # path-length target a (checkpointed)
        self.data_space = data_space  # where D works (models.ModelSpec.data_space)
        self.augment_pipe = augment_pipe  # ADA's pipe (None: no augmentation of D's inputs)
        self.real_signs = SignTally()  # sign(D(real)) since the last ADA update (used when the pipe adapts)
        # train.speed.compile: compiled graphs for the first-order passes; the regularisers differentiate
        # their gradients (R1, WGAN-GP, path length), which compiled graphs cannot, so they run eagerly.
        # cudagraphs: torch.compile's reduce-overhead mode, which replays the compiled graphs as CUDA
        # graphs (re-recorded per input shape, so a growing model records one set per resolution)
        parts = {"G": G, "D": D, **({"mapping": G.mapping, "synthesis": G.synthesis} if style_based else {})}
        self.eager = parts
        self.cuda_graphs = compile == "cudagraphs"
        if compile == "none":
            self.fast = parts
        else:
            mode = "reduce-overhead" if self.cuda_graphs else "default"
            self.fast = {name: torch.compile(net, mode=mode) for name, net in parts.items()}

    def run_G(
        self, z: torch.Tensor, ctx: StepContext, update_emas: bool = False, return_ws: bool = False, fast: bool = True
    ):
        """Fakes at the current resolution in D's data space (and the ws they came from, for the path length)."""
        nets, ws = self.fast if fast else self.eager, None
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
        return (self.fast if fast else self.eager)["D"](images).float()

    def phase_terms(
        self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """The named loss terms of `phase` (scalars of this rank's samples)."""
        if self.cuda_graphs:  # a phase runs forward and backward to the end: its graphs' outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        if self.loss.type == "rpgan":
            return (self._rpgan_g_terms if phase.net == "G" else self._rpgan_d_terms)(z, real, ctx)
        return (self._g_terms if phase.net == "G" else self._d_terms)(phase, z, real, ctx)

    def _g_terms(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> dict:
        terms = {}
        if phase.main:
            terms[G_ADVERSARIAL] = losses.g_adversarial(self.loss.type, self.run_D(self.run_G(z, ctx), ctx))
        if phase.reg:
            n = max(1, z.shape[0] // losses.PL_BATCH_SHRINK)
            images, ws = self.run_G(z[:n], ctx, return_ws=True, fast=False)
            penalty, self.pl_mean = losses.path_length(images, ws, self.pl_mean, self.all_mean)
            self.pl_mean = self.pl_mean.detach()
            terms[G_PATH_LENGTH] = penalty * self.loss.pl_weight
        return terms

    def _d_terms(self, phase: Phase, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> dict:
        cfg, terms = self.loss, {}
        if phase.main:  # the fakes first, as the official Dmain (their draws come first)
            fake = self.run_G(z, ctx, update_emas=True).detach()
            fake_logits = self.run_D(fake, ctx)
        real = self.data_space.from_unit(real.detach()).requires_grad_(phase.reg)
        real_logits = self.run_D(real, ctx, fast=not phase.reg)
        self.real_signs.add(real_logits)  # ADA's statistic: every phase that shows D reals (official)
        if phase.main:
            terms[D_ADVERSARIAL] = losses.d_adversarial(cfg.type, real_logits, fake_logits)
            if cfg.drift > 0:
                terms[D_DRIFT] = losses.drift_penalty(real_logits, cfg.drift)
            if cfg.gp_weight > 0:
                run_D = lambda images: self.run_D(images, ctx, fast=False)
                terms[D_GRADIENT_PENALTY] = losses.gradient_penalty(run_D, real, fake, cfg.gp_weight, ctx.gp_eps)
            if cfg.bcr_real_lambda > 0 or cfg.bcr_fake_lambda > 0:
                terms[D_CONSISTENCY] = losses.balanced_consistency(
                    lambda images: self.run_D(images, ctx),
                    (real.detach(), real_logits, cfg.bcr_real_lambda),
                    (fake, fake_logits, cfg.bcr_fake_lambda),
                    augment.consistency_augment,
                )
        if phase.reg:
            terms[D_R1] = losses.r1_penalty(real_logits, real, ctx.r1_gamma)
        return terms

    def _rpgan_g_terms(self, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> dict:
        """R3GAN's G step (R3GAN/Trainer.py AccumulateGeneratorGradients): D scores the fakes, then the reals,
        and G lowers softplus(-(D(fake) - D(real)))."""
        fake_logits = self.run_D(self.run_G(z, ctx), ctx)
        real_logits = self.run_D(self.data_space.from_unit(real.detach()), ctx)
        return {G_ADVERSARIAL: losses.relativistic(fake_logits, real_logits)}

    def _rpgan_d_terms(self, z: torch.Tensor, real: torch.Tensor, ctx: StepContext) -> dict:
        """R3GAN's D step (AccumulateDiscriminatorGradients): softplus(-(D(real) - D(fake))) plus gamma/2 times
        R1 on the reals and R2 on the fakes, every step, each through the augmentation (reals scored first)."""
        real = self.data_space.from_unit(real.detach()).requires_grad_(True)
        fake = self.run_G(z, ctx, update_emas=True).detach().requires_grad_(True)
        real_logits = self.run_D(real, ctx, fast=False)
        fake_logits = self.run_D(fake, ctx, fast=False)
        self.real_signs.add(real_logits)
        return {
            D_ADVERSARIAL: losses.relativistic(real_logits, fake_logits),
            D_R1: losses.r1_penalty(real_logits, real, ctx.r1_gamma),
            D_R2: losses.r1_penalty(fake_logits, fake, ctx.r1_gamma),
        }


def phase_loss(phase: Phase, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the phase backpropagates: the sum of its terms, lazy regularisers times the interval."""
    return sum(value * (phase.interval if name in LAZY_TERMS else 1) for name, value in terms.items())
