"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models", sec. 2).

Each set's manifold is the union of hyperspheres around its feature vectors, each with the radius
of the distance to its k-th nearest neighbour within the set (k = 3 in the paper). Precision is the
fraction of generated samples inside the real manifold, recall the fraction of real samples inside
the generated one. The paper uses VGG16 features; the study uses the Inception features it already
has for FID, and equal-sized sets (the smaller of the two counts).
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
class PrecisionRecall:
    precision: float  # share of generated features inside the real manifold
    recall: float  # share of real features inside the generated manifold
    num: int  # features per set
    k: int  # the k-th neighbour's distance is each feature's radius


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, device: torch.device | str = "cpu"
) -> PrecisionRecall:
    n = min(len(real), len(fake))
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    real_t = torch.as_tensor(real[:n], dtype=torch.float32, device=device)
    fake_t = torch.as_tensor(fake[:n], dtype=torch.float32, device=device)
    precision = inside_manifold(fake_t, real_t, knn_radii(real_t, k)).float().mean().item()
    recall = inside_manifold(real_t, fake_t, knn_radii(fake_t, k)).float().mean().item()
    return PrecisionRecall(precision=precision, recall=recall, num=int(n), k=int(k))
