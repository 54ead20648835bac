"""Reference statistics: Inception features of the cached real faces, computed once per cache, and the
real-vs-real noise floor of FID and KID at every sample count the evaluation uses.

With evaluate.extractor=fid_helper (or `auto` when clean-fid's file is unavailable) the features are
also checked against clean-fid's own Inception file whenever it is present
(facegan.metrics.features.check_agreement); the result decides the label of every number computed
against these statistics (facegan.metrics.labels).

The floor at n is FID (and KID) between the first n cached faces and the next n: what a generator
that samples the data distribution perfectly would score with n images. Small-n FIDs are biased
upwards by about this much, so a difference between models means little unless it is large beside
it. When the cache holds fewer than 2n faces the floor uses n' = half the cache and says so.

At the k-NN metrics' n (evaluate.num_gen) the floor also holds the range of precision, recall, density,
coverage and the feature-spread ratio over KNN_FLOOR_SPLITS random halvings of the 2n faces: at small n
even real faces score far from 1 on them, and the report flags a model's value only outside that range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegan import handoff, settings
from facegan.data.cache import FaceCache
from facegan.device import resolve_device
from facegan.errors import UserError
from facegan.metrics.dinov2 import build_dinov2
from facegan.metrics.features import build_extractor, cache_crop, check_agreement, extract, feature_chain
from facegan.metrics.fid import fid_from_features, kid_from_features
from facegan.metrics.labels import feature_label_key
from facegan.metrics.precision_recall import knn_metrics
from facegan.metrics.resize_pool import resize_pool

log = logging.getLogger(__name__)
AGREEMENT_FACES = 8
FLOOR_KID_SEED = 0  # KID's random subsets for the floors: fixed, the floor is a property of the data
KNN_FLOOR_SEED = 0  # the random halvings of the k-NN floor: fixed for the same reason
KNN_FLOOR_SPLITS = 5  # halvings whose smallest and largest value make the k-NN floor's range


def floor_sizes(eval_params: settings.EvaluateSettings) -> list[int]:
    """The sample counts whose floor the report shows: the FID sets' and the snapshot points'."""
    return sorted({eval_params.num_gen, eval_params.snapshot_num_gen})


def noise_floor(features: np.ndarray, n: int, seed: int, knn_k: int | None = None) -> handoff.Floor:
    """FID and KID between features[:n'] and features[n':2n'], n' = min(n, half of what there is); with
    `knn_k`, also the k-NN metrics' real-vs-real range at n' (`knn_floor`)."""
    half = min(n, len(features) // 2)
    if half < 2:
        raise UserError(f"a noise floor at n={n} needs at least 4 cached faces: raise data.num_faces")
    a, b = features[:half], features[half : 2 * half]
    knn = None if knn_k is None or half <= knn_k else knn_floor(features[: 2 * half], knn_k)
    return handoff.Floor(n=int(half), fid=fid_from_features(a, b), kid=kid_from_features(a, b, seed), knn=knn)


def spread_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """Total variance (trace of the covariance) of one feature set over another's: far below 1 hints collapse."""
    return float(np.trace(np.cov(generated, rowvar=False)) / np.trace(np.cov(real, rowvar=False)))


def knn_floor(features: np.ndarray, k: int, splits: int = KNN_FLOOR_SPLITS) -> handoff.KnnFloor:
    """Precision, recall, density, coverage and the spread ratio of one half of `features` against the
    other, over `splits` seeded random halvings: how far from "perfect" each reads for real data at n."""
    half = len(features) // 2
    values: dict[str, list[float]] = {name: [] for name in ("precision", "recall", "density", "coverage", "ratio")}
    for split in range(splits):
        order = np.random.default_rng(KNN_FLOOR_SEED + split).permutation(len(features))
        real, other = features[order[:half]], features[order[half : 2 * half]]
        knn = knn_metrics(real, other, k)
        for name in ("precision", "recall", "density", "coverage"):
            values[name].append(getattr(knn, name))
        values["ratio"].append(spread_ratio(other, real))

    def span(name: str) -> handoff.Span:
        return handoff.Span(low=float(min(values[name])), high=float(max(values[name])))

    return handoff.KnnFloor(
        k=int(k),
        splits=int(splits),
        precision=span("precision"),
        recall=span("recall"),
        density=span("density"),
        coverage=span("coverage"),
        spread_ratio=span("ratio"),
    )


@dataclass
class ReferenceFeatures:
    inception: np.ndarray  # (num_ref, 2048) (256 for the proxy)
    dinov2: np.ndarray | None  # (num_ref, 1024) (the stand-in's width); None with evaluate.dinov2 none


def dinov2_reference(
    eval_params: settings.EvaluateSettings, cache: FaceCache, needed: int, count: int, device
) -> tuple[np.ndarray | None, handoff.DinoReference | None]:
    """The reals' DINOv2 features and floors (FD-DINOv2's own real-vs-real floor), or (None, None) when off."""
    extractor = build_dinov2(eval_params, device)
    if extractor is None:
        return None, None
    batch = eval_params.batch_size
    batches = (np.asarray(cache.faces[i : min(i + batch, needed)]) for i in range(0, needed, batch))
    features = extract(batches, extractor)
    floors = {str(n): noise_floor(features, n, FLOOR_KID_SEED) for n in floor_sizes(eval_params)}
    meta = handoff.DinoReference(
        label_key=extractor.kind, network=extractor.note, weights=extractor.weights, floors=floors, count=int(count)
    )
    return features[:count], meta


def reference_statistics(
    view: handoff.ReferenceView, cache_dir: Path
) -> tuple[ReferenceFeatures, handoff.ReferenceMeta]:
    """(features of the first evaluate.num_ref cached faces, their meta with the noise floors)."""
    eval_params = view.evaluate
    cache = FaceCache(cache_dir)
    if cache.resolution != view.resolution:
        raise UserError(
            f"the face cache is {cache.resolution}px but data.resolution={view.resolution}: run `dvc repro preprocess`"
        )
    device = resolve_device(eval_params.device)
    extractor = build_extractor(eval_params.extractor, eval_params, device)
    agreement = None
    if extractor.kind == "fid_helper":
        agreement = check_agreement(np.asarray(cache.faces[:AGREEMENT_FACES]), eval_params, device)
        if not agreement["checked"]:
            log.warning(
                "fid-helper features not verified against clean-fid's (%s): numbers are labelled FID*",
                agreement["reason"],
            )
    count = min(eval_params.num_ref, len(cache))
    if count < eval_params.num_ref:
        log.warning(
            "evaluate.num_ref=%d but the cache holds %d faces: using %d", eval_params.num_ref, len(cache), count
        )
    needed = min(len(cache), max(count, 2 * max(floor_sizes(eval_params))))
    batch = eval_params.batch_size
    batches = (np.asarray(cache.faces[i : min(i + batch, needed)]) for i in range(0, needed, batch))
    with resize_pool(eval_params, device) as pool:
        features = extract(batches, extractor, pool)
    floors = {
        str(n): noise_floor(features, n, FLOOR_KID_SEED, eval_params.pr_k if n == eval_params.num_gen else None)
        for n in floor_sizes(eval_params)
    }
    for n, floor in floors.items():
        log.info(
            "noise floor at n=%s: FID %.3f, KID %.5f (two disjoint sets of %d real faces)",
            n,
            floor.fid,
            floor.kid,
            floor.n,
        )
    dino_features, dino_meta = dinov2_reference(eval_params, cache, needed, count, device)
    meta = handoff.ReferenceMeta(
        extractor=extractor.kind,
        weights=extractor.weights,
        choice=extractor.note,
        label_key=feature_label_key(extractor.kind, agreement),
        agreement=agreement,
        floors=floors,
        count=int(count),
        cache_count=len(cache),
        cache_fingerprint=cache.fingerprint,
        source=cache.meta.source,
        synthetic=cache.meta.synthetic,
        resolution=cache.resolution,
        chain=feature_chain(cache_crop(cache.meta), cache.resolution, extractor),
        dinov2=dino_meta,
    )
    return ReferenceFeatures(features[:count], dino_features), meta


DINOV2_FILE = "features_dinov2.npz"


def save_features(path: Path, features: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, features=features)


def load_features(reference_dir: Path, name: str = "features.npz") -> np.ndarray:
    path = reference_dir / name
    if not path.exists():
        raise UserError(f"{path} is missing: run `dvc repro reference_stats`")
    try:
        return np.load(path)["features"]
    except (ValueError, KeyError, OSError) as err:
        raise UserError(f"{path} cannot be read ({type(err).__name__}): run `dvc repro -f reference_stats`") from err
