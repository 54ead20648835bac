"""Perceptual path length (Karras et al. 2019, "A Style-Based Generator Architecture for GANs",
sec. 4.2; kept in StyleGAN2, sec. 3.2).

  l = E[ d(G(interp(a, b; t)), G(interp(a, b; t + eps))) / eps^2 ]

with d the LPIPS distance (VGG16 backbone, `lpips` package), eps = 1e-4, a and b random latents,
  - W (style-based models): a, b = mapping(z_a), mapping(z_b), interp = linear interpolation (lerp);
  - Z (the others): interp = spherical interpolation (slerp) of z_a, z_b;
  - sampling "full": t ~ U(0, 1); "end": t = 0 (the end points; the official code's choice of t in {0, 1});
  - images cropped to the face (the papers' FFHQ crop) and box-downsampled to at most 256x256
    before LPIPS;
  - the mean taken after discarding distances below the 1st and above the 99th percentile.
Both images of a pair are generated with the same random state, so per-layer noise inputs are
identical and the distance measures the latent step alone (the official code fixes the noise).
No truncation (psi = 1).

LPIPS backbone: torchvision's ImageNet VGG16 from `evaluate.lpips_weights` (downloaded there,
verified, when absent and online); `evaluate.lpips=proxy` uses a seeded random backbone
(`pnet_rand=True`) instead, offline, and every number it gives is labelled "proxy PPL".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facegan.metrics import weights

log = logging.getLogger(__name__)
LPIPS_PROXY_SEED = 1801
MAX_LPIPS_RES = 256


class LpipsDistance:
    def __init__(self, net: torch.nn.Module, kind: str):
        self.net, self.kind = net, kind

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b).reshape(-1)


def build_lpips(kind: str, weights_path: str | Path, device: torch.device) -> LpipsDistance:
    import lpips

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LPIPS_PROXY_SEED)
        # pnet_rand=True keeps lpips from downloading the backbone; the real one is loaded below
        net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    if kind == "proxy":
        log.warning("using the PROXY LPIPS (random VGG16 backbone): PPL numbers are labelled proxy")
    else:
        state = torch.load(weights.resolve(weights_path, weights.LPIPS_VGG16), map_location="cpu", weights_only=True)
        load_vgg_backbone(net.net, state)
    return LpipsDistance(net.eval().requires_grad_(False).to(device), kind)


def load_vgg_backbone(backbone: torch.nn.Module, vgg_state: dict) -> None:
    """lpips splits VGG16's `features` into slice1..slice5 keeping each layer's index as its name."""
    backbone.load_state_dict({key: vgg_state[f"features.{key.split('.', 1)[1]}"] for key in backbone.state_dict()})


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of directions, with the norm interpolated linearly.

    The official code returns unit vectors, which the style-based mappings normalise anyway; keeping
    the norm keeps z on the Gaussian's shell for generators that do not normalise z (DCGAN).
    """
    t = t.reshape(-1, 1)
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    unit_a, unit_b = a / norm_a, b / norm_b
    cos = (unit_a * unit_b).sum(1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.acos(cos) * t
    ortho = unit_b - cos * unit_a
    ortho = ortho / ortho.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (unit_a * torch.cos(angle) + ortho * torch.sin(angle)) * torch.lerp(norm_a, norm_b, t)


def lpips_view(images: torch.Tensor, crop: bool) -> torch.Tensor:
    if crop:  # the papers' face crop of aligned faces: rows 3/8..7/8, columns 2/8..6/8
        c = images.shape[2] // 8
        images = images[:, :, c * 3 : c * 7, c * 2 : c * 6]
    factor = images.shape[2] // MAX_LPIPS_RES
    if factor > 1:
        images = torch.nn.functional.avg_pool2d(images, factor)
    return images


def generate_same_noise(fn, latents: torch.Tensor, noise_seed: int) -> torch.Tensor:
    devices = [latents.device] if latents.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(noise_seed)
        return fn(latents).float()


def trimmed_mean(dist: np.ndarray) -> float:
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())


@dataclass(frozen=True)
class PathLength:
    ppl: float  # mean of the distances between the 1st and 99th percentiles
    num: int  # latent pairs
    space: str  # z or w
    sampling: str  # full (t uniform) or end (t = 0)
    epsilon: float
    lpips: str  # the distance network's kind


@dataclass(frozen=True)
class PplSampling:
    """Which latent pairs PPL measures: in Z (slerp) or W (lerp), at a uniform t (`full`) or t = 0 (`end`),
    `num` pairs `epsilon` apart, images cropped to the face (`crop`, as StyleGAN's paper) or whole."""

    space: str
    sampling: str
    num: int
    epsilon: float
    crop: bool


@torch.no_grad()
def path_length(
    G, distance: LpipsDistance, pairs: PplSampling, batch_size: int, seed: int, device: torch.device
) -> PathLength:
    """PPL of G over `pairs.num` latent pairs; returns the trimmed mean and the raw distances' count."""
    space, sampling, num_samples, epsilon, crop = pairs.space, pairs.sampling, pairs.num, pairs.epsilon, pairs.crop
    if space not in ("z", "w") or sampling not in ("full", "end"):
        raise ValueError(f"space must be z or w and sampling full or end, got {space}, {sampling}")
    gen = torch.Generator().manual_seed(seed)
    dists = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z_a, z_b = torch.randn(2, n, G.z_dim, generator=gen).to(device)
        t = (torch.rand(n, generator=gen) if sampling == "full" else torch.zeros(n)).to(device)
        if space == "w":
            w_a, w_b = G.mapping(z_a), G.mapping(z_b)
            t_w = t.reshape(-1, 1, 1)
            pair = [torch.lerp(w_a, w_b, t_w), torch.lerp(w_a, w_b, t_w + epsilon)]
            fn = G.synthesis
        else:
            pair = [slerp(z_a, z_b, t), slerp(z_a, z_b, t + epsilon)]
            fn = G
        noise_seed = seed + 1 + start
        img_a, img_b = (lpips_view(generate_same_noise(fn, latents, noise_seed), crop) for latents in pair)
        dists.append((distance(img_a, img_b) / epsilon**2).double().cpu().numpy())
    dist = np.concatenate(dists)
    return PathLength(
        ppl=trimmed_mean(dist), num=int(len(dist)), space=space, sampling=sampling, epsilon=epsilon, lpips=distance.kind
    )
