"""Pictures of a trained generator for the report: sample grid, truncation sweep, interpolation strips.

All latents come from fixed seeds, and each image is generated under a fixed random state, so
noise inputs of the style-based models do not flicker along a sweep or a strip.
"""

from __future__ import annotations

import numpy as np
import torch

from facegan.data.cache import make_grid, to_uint8
from facegan.metrics.ppl import generate_same_noise, slerp


def _latents(G, count: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def sample_grid(G, size: int, seed: int, device: torch.device) -> np.ndarray:
    z = _latents(G, size * size, seed, device)
    return make_grid(to_uint8(generate_same_noise(G, z, seed)), size)


@torch.no_grad()
def truncation_sweep(G, psis: list[float], rows: int, seed: int, device: torch.device) -> np.ndarray:
    """One row per latent, one column per psi: w_avg + psi * (w - w_avg) (StyleGAN sec. 3.3 / App. B)."""
    z = _latents(G, rows, seed, device)
    columns = [to_uint8(generate_same_noise(lambda zz, psi=psi: G(zz, truncation_psi=psi), z, seed)) for psi in psis]
    return make_grid(np.stack(columns, axis=1).reshape(rows * len(psis), *columns[0].shape[1:]), len(psis))


@torch.no_grad()
def interpolation_strips(G, style_based: bool, steps: int, seed: int, device: torch.device) -> np.ndarray:
    """Row 1: slerp in Z; row 2 (style-based models): linear interpolation in W, same end points."""
    z_a, z_b = _latents(G, 2, seed, device).split(1)
    t = torch.linspace(0, 1, steps, device=device)
    rows = [_frames(G, slerp(z_a.expand(steps, -1), z_b.expand(steps, -1), t), seed)]
    if style_based:
        w_a, w_b = G.mapping(z_a), G.mapping(z_b)
        rows.append(_frames(G.synthesis, torch.lerp(w_a, w_b, t.reshape(-1, 1, 1)), seed))
    return make_grid(np.concatenate(rows), steps)


def _frames(fn, latents: torch.Tensor, seed: int) -> np.ndarray:
    """One image per latent, each under the same random state: the noise stays put along the strip."""
    return np.concatenate([to_uint8(generate_same_noise(fn, latents[i : i + 1], seed)) for i in range(len(latents))])
