"""GAN losses and regularisers as named, composable pieces.

Adversarial losses (selected by `loss.type` in a model's params):
  ns       non-saturating logistic (Goodfellow et al. 2014): D: softplus(-real) + softplus(fake),
           G: softplus(-fake)
  wgan_gp  Wasserstein loss (Arjovsky et al. 2017) with gradient penalty (Gulrajani et al. 2017)
           and PGGAN's epsilon drift term  drift * real**2  (Karras et al. 2018)
  hinge    D: relu(1 - real) + relu(1 + fake), G: -fake (Lim & Ye 2017; Miyato et al. 2018)
Regularisers:
  r1_penalty             gamma/2 * ||grad_x D(x)||^2 on reals (Mescheder et al. 2018), lazy every k
  gradient_penalty       (||grad D(mix)|| - 1)^2 on real/fake interpolates (WGAN-GP)
  PathLengthRegularizer  (||J_w^T y|| - a)^2 with a an EMA of the lengths (Karras et al. 2020)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def drift_penalty(real_logits: torch.Tensor, weight: float) -> torch.Tensor:
    return weight * real_logits.square().mean()


def r1_penalty(D, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * E||grad_x D(x)||^2 over real images."""
    real = real.detach().requires_grad_(True)
    logits = D(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return 0.5 * gamma * grad.square().flatten(1).sum(1).mean()


def gradient_penalty(
    D, real: torch.Tensor, fake: torch.Tensor, weight: float, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """weight * E(||grad D(x_hat)|| - 1)^2 with x_hat = eps real + (1 - eps) fake, eps ~ U(0, 1)
    per sample (the loop passes eps in so that a data-parallel run draws the same ones)."""
    if eps is None:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    eps = eps.to(real.device, real.dtype).view(-1, 1, 1, 1)
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


class PathLengthRegularizer:
    """StyleGAN2's path-length penalty; `mean` is the running target a, kept in checkpoints."""

    def __init__(self, weight: float, decay: float = 0.01, batch_shrink: int = 2, all_mean=None):
        self.weight, self.decay, self.batch_shrink = weight, decay, batch_shrink
        self.all_mean = all_mean or (lambda t: t)  # averages over data-parallel ranks
        self.mean = torch.zeros([])

    def __call__(self, G, z: torch.Tensor) -> torch.Tensor:
        z = z[: max(1, z.shape[0] // self.batch_shrink)]
        ws = G.mapping(z)
        images = G.synthesis(ws)
        noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.mean = self.mean.to(lengths.device)
        self.mean = self.mean.lerp(self.all_mean(lengths.mean().detach()), self.decay)
        return self.weight * (lengths - self.mean).square().mean()
