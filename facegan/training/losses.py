"""GAN losses and regularisers as named, composable pieces (the phases in phases.py combine them).

Adversarial losses (selected by `loss.type` in a model's params):
  ns       non-saturating logistic (Goodfellow et al. 2014): D: softplus(-real) + softplus(fake),
           G: softplus(-fake)
  wgan_gp  Wasserstein loss (Arjovsky et al. 2017) with gradient penalty (Gulrajani et al. 2017)
           and PGGAN's epsilon drift term  drift * real**2  (Karras et al. 2018)
  hinge    D: relu(1 - real) + relu(1 + fake), G: -fake (Lim & Ye 2017; Miyato et al. 2018)
  rpgan    relativistic pairing: D: softplus(-(real - fake)), G: softplus(-(fake - real)), with R1 on reals
           and R2 (the same penalty on fakes) at gamma/2 every step (R3GAN, Huang et al. 2024)
Regularisers:
  r1_penalty        gamma/2 * ||grad_x D(x)||^2 on reals (Mescheder et al. 2018), from D's logits
                    of inputs that require grad, as the official StyleGAN2-ADA/3 loss computes it
  gradient_penalty  (||grad D(mix)|| - 1)^2 on real/fake interpolates (WGAN-GP)
  path_length       (||J_w^T y|| - a)^2 with a an EMA of the lengths (Karras et al. 2020)
  balanced_consistency  ||D(aug(x)) - D(x)||^2 for reals and fakes (bCR, Zhao et al. 2021, as StyleSwin uses it)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

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
