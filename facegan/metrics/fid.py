"""FID and KID from Inception features, through clean-fid's own formulas.

`fid_of_folders` is the folder-to-folder FID of clean-fid's `compute_fid(fdir1, fdir2, mode="clean")`
computed by our own path (our image reading, clean-fid's resizer, our extractor wrapper); the tests
check the two agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cleanfid.fid import frechet_distance, kernel_distance
from PIL import Image

from facegan.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    mu_a, sigma_a = feats_a.mean(0), np.cov(feats_a, rowvar=False)
    mu_b, sigma_b = feats_b.mean(0), np.cov(feats_b, rowvar=False)
    return float(frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    state = np.random.get_state()  # kernel_distance draws subsets from numpy's global RNG
    np.random.seed(seed)
    try:
        return float(kernel_distance(feats_a, feats_b, num_subsets=100, max_subset_size=1000))
    finally:
        np.random.set_state(state)


def spread(values: list[float]) -> dict:
    """Mean and sample std of FIDs over several generated sets (std 0 for a single set)."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


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
