"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", sec. 2), density and coverage (Naeem et al. 2020, "Reliable Fidelity
and Diversity Metrics for Generative Models", sec. 3).

Each set's manifold is the union of hyperspheres around its feature vectors, each with the radius
of the distance to its k-th nearest neighbour within the set (k = 3 in the paper). Precision is the
fraction of generated samples inside the real manifold, recall the fraction of real samples inside
the generated one. The paper uses VGG16 features; the study uses the Inception features it already
has for FID, and equal-sized sets (the smaller of the two counts).

Density counts, for each generated sample, how many real balls contain it (divided by k and averaged):
near 1 where the generated samples are distributed like the reals, above 1 where they crowd dense real
regions, and unlike precision not inflated by a few real outliers with large balls. Coverage is the share
of real balls that hold at least one generated sample: recall measured from the real side, so a few
generated outliers cannot inflate it. Both use the real radii precision uses (one pass). Balls are
closed (distance <= radius) as NVlabs' precision/recall computes them; the `prdc` package uses open
balls, which differs only on exact ties (tests/test_metrics.py compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def knn_radii(feats: torch.Tensor, k: int, rows_per_batch: int = 1024) -> torch.Tensor:
    """Distance from each vector to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for start in range(0, len(feats), rows_per_batch):
        dist = torch.cdist(feats[start : start + rows_per_batch], feats)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # the smallest distance is the vector itself
    return torch.cat(radii)


def inside_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, rows_per_batch: int = 1024
) -> torch.Tensor:
    """For each query, whether it lies within some support vector's hypersphere."""
    inside = []
    for start in range(0, len(queries), rows_per_batch):
        dist = torch.cdist(queries[start : start + rows_per_batch], support)
        inside.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside)


@dataclass(frozen=True)
class KnnMetrics:
    """The four k-NN metrics of one generated set against the reals, from the same radii."""

    precision: float  # share of generated features inside the real manifold
    recall: float  # share of real features inside the generated manifold
    density: float  # real balls containing a generated feature, per generated feature, over k (can exceed 1)
    coverage: float  # share of real balls that contain at least one generated feature
    num: int  # features per set
    k: int  # the k-th neighbour's distance is each feature's radius


def knn_metrics(
    real: np.ndarray, fake: np.ndarray, k: int = 3, device: torch.device | str = "cpu", rows_per_batch: int = 1024
) -> KnnMetrics:
    """Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) in one
    batched pass: each set's k-NN radii once, then the real-fake distances a block of rows at a time, both
    ways, so that 50k x 50k never holds the full distance matrix."""
    n = min(len(real), len(fake))
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    real_t = torch.as_tensor(real[:n], dtype=torch.float32, device=device)
    fake_t = torch.as_tensor(fake[:n], dtype=torch.float32, device=device)
    real_radii, fake_radii = knn_radii(real_t, k, rows_per_batch), knn_radii(fake_t, k, rows_per_batch)
    inside_real, balls_hit = [], 0.0  # per fake: inside some real ball; the number of real balls around fakes
    for start in range(0, n, rows_per_batch):
        within = torch.cdist(fake_t[start : start + rows_per_batch], real_t) <= real_radii.unsqueeze(0)
        inside_real.append(within.any(dim=1))
        balls_hit += within.sum().item()
    inside_fake, covered = [], []  # per real: inside some fake ball; its own ball holds a fake
    for start in range(0, n, rows_per_batch):
        dist = torch.cdist(real_t[start : start + rows_per_batch], fake_t)
        inside_fake.append((dist <= fake_radii.unsqueeze(0)).any(dim=1))
        covered.append(dist.min(dim=1).values <= real_radii[start : start + rows_per_batch])
    return KnnMetrics(
        precision=torch.cat(inside_real).float().mean().item(),
        recall=torch.cat(inside_fake).float().mean().item(),
        density=balls_hit / (k * n),
        coverage=torch.cat(covered).float().mean().item(),
        num=int(n),
        k=int(k),
    )
