"""Stage `reference_stats`: Inception features of the cached real faces, computed once.

Writes data/reference/features.npz (features of the first evaluate.num_ref faces) and meta.json
(extractor, its label, counts, the data source). With evaluate.extractor=fid_helper it also
compares fid-helper's features with clean-fid's on a few faces whenever clean-fid's weights are
present, and records the outcome: the report calls fid-helper numbers FID only when it passed.
"""
from __future__ import annotations

import logging

import numpy as np

from facegan import paths, stage_params
from facegan.data.cache import FaceCache
from facegan.device import resolve_device
from facegan.errors import stage_main
from facegan.io import atomic_path, write_json
from facegan.metrics.features import LABELS, build_extractor, check_agreement, extract, label_key

AGREEMENT_FACES = 8


@stage_main
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = stage_params.load("reference_stats")
    ev = params["evaluate"]
    cache = FaceCache(paths.CACHE_DIR)
    device = resolve_device(ev["device"])
    extractor = build_extractor(ev["extractor"], ev, device)
    agreement = None
    if extractor.kind == "fid_helper":
        agreement = check_agreement(np.asarray(cache.faces[:AGREEMENT_FACES]), ev, device)
        if not agreement["checked"]:
            logging.warning("fid-helper features not verified against clean-fid's (%s): numbers are labelled FID*",
                            agreement["reason"])
    count = min(ev["num_ref"], len(cache))
    if count < ev["num_ref"]:
        logging.warning("evaluate.num_ref=%d but the cache holds %d faces: using %d", ev["num_ref"], len(cache), count)
    batches = (np.asarray(cache.faces[i:min(i + ev["batch_size"], count)]) for i in range(0, count, ev["batch_size"]))
    feats = extract(batches, extractor)
    with atomic_path(paths.REFERENCE_DIR / "features.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, features=feats)
    key = label_key(extractor.kind, agreement)
    write_json(paths.REFERENCE_DIR / "meta.json", {
        "extractor": extractor.kind, "label_key": key, "label": LABELS[key], "agreement": agreement, "count": int(count),
        "cache_count": len(cache), "source": cache.meta.get("source"), "synthetic": bool(cache.meta.get("synthetic", False)),
        "resolution": cache.resolution})


if __name__ == "__main__":
    main()
