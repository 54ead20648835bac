"""FID and KID from Inception features, through clean-fid's own formulas.

`fid_of_folders` is the folder-to-folder FID of clean-fid's `compute_fid(fdir1, fdir2, mode="clean")`
computed by our own path (our image reading, clean-fid's resizer, our extractor wrapper); the tests
check the two agree.

FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2). With fewer samples than feature
dimensions (the CPU demo: 200 images, 2048 features) the covariances have rank below n, and the
last trace equals the sum of the singular values of X_a X_b^T / sqrt((n_a - 1)(n_b - 1)) (X the
centred features): the eigenvalues of S_a S_b are those of (X_a X_b^T)(X_b X_a^T) up to zeros.
That n x n computation is exact and takes milliseconds, where clean-fid's 2048 x 2048 `sqrtm`
takes ~10 s on 2 cores; with more samples than dimensions clean-fid's own `frechet_distance` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facegan.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    n_a, n_b = len(feats_a), len(feats_b)
    if min(n_a, n_b) <= feats_a.shape[1]:
        x_a, x_b = feats_a - mu_a, feats_b - mu_b
        tr_sqrt = np.linalg.svd(x_a @ x_b.T, compute_uv=False).sum() / np.sqrt((n_a - 1) * (n_b - 1))
        traces = np.square(x_a).sum() / (n_a - 1) + np.square(x_b).sum() / (n_b - 1)
        return float(np.square(mu_a - mu_b).sum() + traces - 2 * tr_sqrt)
    from cleanfid.fid import frechet_distance  # imported here: cleanfid.fid pulls in torchvision (~4 s per stage)

    sigma_a, sigma_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    return float(frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


@dataclass(frozen=True)
class Extrapolated:
    """FID(n) over a series of n and its linear fit against 1/n (Chong & Forsyth 2020, "Effectively Unbiased
    FID and Inception Score and where to find them", sec. 3): FID(n) = value + slope / n, so `value`, the
    intercept at 1/n = 0, is FID at infinitely many generated images (FID-infinity) and slope / n the bias
    at n. KID, unbiased by construction, is given at the same n: it should not trend with n."""

    value: float  # FID-infinity
    slope: float
    fid_by_n: dict[str, float]  # str(n) -> FID of n generated features drawn from the set, against the reference
    kid_by_n: dict[str, float]  # at the smallest, middle and largest n (each KID is 100 subsets of up to 1000)


def sample_sizes(num: int, points: int, smallest: float) -> list[int]:
    """`points` sample counts spread evenly from `smallest` x num to num (the paper: 5k to 50k, 15 points)."""
    low = max(2, int(round(num * smallest)))
    return sorted({int(n) for n in np.linspace(low, num, points)})


def extrapolate_fid(
    fake: np.ndarray, reference: np.ndarray, sizes: list[int], seed: int, with_kid: bool = True
) -> Extrapolated:
    """FID and KID of a random subset of each size of the generated features against the whole reference, and
    FID's least-squares line in 1/n. Only the features already extracted are used: no new images."""
    if len(sizes) < 2:
        raise ValueError(f"FID-infinity needs at least two sample counts, got {sizes}")
    rng = np.random.default_rng(seed)
    fid_by_n, kid_by_n = {}, {}
    kid_sizes = {sizes[0], sizes[len(sizes) // 2], sizes[-1]} if with_kid else set()
    for n in sizes:
        subset = fake if n >= len(fake) else fake[rng.choice(len(fake), n, replace=False)]
        fid_by_n[str(n)] = fid_from_features(subset, reference)
        if n in kid_sizes:  # KID costs ~100x an FID below 2048 features: three points show a trend
            kid_by_n[str(n)] = kid_from_features(subset, reference, seed)
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), list(fid_by_n.values()), 1)
    return Extrapolated(value=float(intercept), slope=float(slope), fid_by_n=fid_by_n, kid_by_n=kid_by_n)


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (`kernel_distance`): the unbiased MMD^2 of the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over 100 subsets of min(n_a, n_b, 1000) drawn without replacement.
    Written out here because importing cleanfid.fid pulls in torchvision (~4 s per stage); the subsets come
    from numpy's legacy generator seeded with `seed`, the draws clean-fid makes after np.random.seed(seed)
    (tests/test_metrics.py compares with clean-fid's compute_kid)."""
    rng = np.random.RandomState(seed)
    dim, num_subsets = feats_a.shape[1], 100
    m = min(len(feats_a), len(feats_b), 1000)
    total = 0.0
    for _ in range(num_subsets):
        x = feats_b[rng.choice(len(feats_b), m, replace=False)]  # clean-fid draws from its second argument first
        y = feats_a[rng.choice(len(feats_a), m, replace=False)]
        within = (x @ x.T / dim + 1) ** 3 + (y @ y.T / dim + 1) ** 3
        across = (x @ y.T / dim + 1) ** 3
        total += (within.sum() - np.diag(within).sum()) / (m - 1) - across.sum() * 2 / m
    return float(total / num_subsets / m)


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample std (ddof 1), 0 for a single value
    values: list[float]


def spread(values: list[float]) -> Spread:
    """Mean and sample std of FIDs over several generated sets (std 0 for a single set)."""
    arr = np.asarray(values, dtype=np.float64)
    return Spread(
        mean=float(arr.mean()), std=float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, values=[float(v) for v in arr]
    )


def folder_batches(folder: str | Path, batch_size: int):
    """uint8 (B, H, W, 3) batches of a folder's images in sorted path order (clean-fid's order)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images in {folder}: point at a folder of PNG/JPEG files")
    for start in range(0, len(files), batch_size):
        yield np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[start : start + batch_size]])


def fid_of_folders(folder_a: str | Path, folder_b: str | Path, extractor, batch_size: int = 32) -> float:
    from facegan.metrics.features import extract

    return fid_from_features(
        extract(folder_batches(folder_a, batch_size), extractor),
        extract(folder_batches(folder_b, batch_size), extractor),
    )
