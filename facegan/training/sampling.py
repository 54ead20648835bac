"""G_ema as every output of a training run samples it: its sample grids, snapshots and final weights.

DCGAN's generator has BatchNorm layers, whose running statistics the EMA of the weights does not
average: the statistics G_ema inherits are G's. `ready_to_sample` re-estimates them for G_ema's own
weights before anything samples it (the official example samples in train mode, with batch
statistics; tests/test_training.py compares the two).
"""

from __future__ import annotations

import torch


def ready_to_sample(G_ema: torch.nn.Module, z_dim: int) -> torch.nn.Module:
    """G_ema as every output shows it (its BatchNorm statistics re-estimated, where it has any)."""
    refresh_batchnorm(G_ema, z_dim, next(G_ema.parameters()).device)
    return G_ema


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
