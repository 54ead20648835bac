"""Reference statistics: Inception features of the cached real faces, computed once per cache.

With evaluate.extractor=fid_helper the features are also checked against clean-fid's own
Inception file whenever it is present (facegan.metrics.features.check_agreement); the result
decides the label of every number computed against these statistics (facegan.metrics.labels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facegan import handoff
from facegan.data.cache import FaceCache
from facegan.device import resolve_device
from facegan.errors import UserError
from facegan.metrics.features import build_extractor, check_agreement, extract
from facegan.metrics.labels import feature_label_key

log = logging.getLogger(__name__)
AGREEMENT_FACES = 8


def reference_statistics(view: handoff.ReferenceView, cache_dir: Path) -> tuple[np.ndarray, handoff.ReferenceMeta]:
    """(features (N, D) of the first evaluate.num_ref cached faces, their meta)."""
    ev = view.evaluate
    cache = FaceCache(cache_dir)
    if cache.resolution != view.resolution:
        raise UserError(
            f"the face cache is {cache.resolution}px but data.resolution={view.resolution}: run `dvc repro preprocess`"
        )
    device = resolve_device(ev["device"])
    extractor = build_extractor(ev["extractor"], ev, device)
    agreement = None
    if extractor.kind == "fid_helper":
        agreement = check_agreement(np.asarray(cache.faces[:AGREEMENT_FACES]), ev, device)
        if not agreement["checked"]:
            log.warning(
                "fid-helper features not verified against clean-fid's (%s): numbers are labelled FID*",
                agreement["reason"],
            )
    count = min(ev["num_ref"], len(cache))
    if count < ev["num_ref"]:
        log.warning("evaluate.num_ref=%d but the cache holds %d faces: using %d", ev["num_ref"], len(cache), count)
    batch = ev["batch_size"]
    features = extract((np.asarray(cache.faces[i : min(i + batch, count)]) for i in range(0, count, batch)), extractor)
    meta = handoff.ReferenceMeta(
        extractor=extractor.kind,
        label_key=feature_label_key(extractor.kind, agreement),
        agreement=agreement,
        count=int(count),
        cache_count=len(cache),
        source=str(cache.meta.get("source")),
        synthetic=bool(cache.meta.get("synthetic", False)),
        resolution=cache.resolution,
    )
    return features, meta


def save_features(path: Path, features: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, features=features)


def load_features(reference_dir: Path) -> np.ndarray:
    path = reference_dir / "features.npz"
    if not path.exists():
        raise UserError(f"{path} is missing: run `dvc repro reference_stats`")
    try:
        return np.load(path)["features"]
    except (ValueError, KeyError, OSError) as err:
        raise UserError(f"{path} cannot be read ({type(err).__name__}): run `dvc repro -f reference_stats`") from err
