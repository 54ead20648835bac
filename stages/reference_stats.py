"""Stage `reference_stats`: Inception (and DINOv2) features of the cached real faces, computed once.

Writes data/reference/features.npz (features of the first evaluate.num_ref faces), features_dinov2.npz
(with evaluate.dinov2 on) and meta.json
(facegan.handoff.ReferenceMeta: extractor, label, counts, the data source). With
evaluate.extractor=fid_helper the library also compares fid-helper's features with clean-fid's
whenever clean-fid's weights are present: the report calls fid-helper numbers FID only when it
passed (facegan/metrics/reference.py).
"""

from __future__ import annotations

from facegan import paths, stage_params
from facegan.errors import stage_main
from facegan.io import atomic_dir
from facegan.metrics.reference import DINOV2_FILE, reference_statistics, save_features
from stages import start_stage


@stage_main(exclusive=True, resumable=False)
def main() -> None:
    start_stage()
    view = stage_params.load("reference_stats")
    features, meta = reference_statistics(view, paths.CACHE_DIR)
    with atomic_dir(paths.REFERENCE_DIR) as out:
        save_features(out / "features.npz", features.inception)
        if features.dinov2 is not None:
            save_features(out / DINOV2_FILE, features.dinov2)
        meta.write(out / "meta.json")


if __name__ == "__main__":
    main()
