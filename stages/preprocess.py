"""Stage `preprocess`: turn the raw images into the aligned face cache (data/faces).

Real photographs: MTCNN detection, five-landmark similarity alignment, the first data.num_faces
accepted faces in deterministic order, resumable (facegan/data/preprocess.py). Synthetic faces
are drawn aligned, so they are only resized. Writes data/faces/{faces.npy, meta.json,
manifest.csv, preview.png} and reports/preprocess.json.
"""

from __future__ import annotations

import logging

from facegan import stage_params
from facegan.data.preprocess import preprocess
from facegan.errors import stage_main
from facegan.paths import CACHE_DIR, PREPROCESS_REPORT, RAW_DIR
from stages import start_stage


@stage_main(exclusive=True)
def main() -> None:
    start_stage()
    data = stage_params.load("preprocess").data
    report = preprocess(data, RAW_DIR, CACHE_DIR, PREPROCESS_REPORT)
    rejected = ", ".join(f"{k}: {v}" for k, v in report["rejected"].items()) or "none rejected"
    logging.info(
        "kept %d of %d images (%s), %.1f images/s",
        report["kept"],
        report["considered"],
        rejected,
        report["images_per_s"],
    )


if __name__ == "__main__":
    main()
