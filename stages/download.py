"""Stage `download`: bring the source images named by data.source into data/raw (facegan.paths.RAW_DIR).

celeba (official Google Drive files, md5-verified), url (zip/tar mirror, optional sha256),
folder (local folder read in place, or a local archive) or synthetic (drawn offline). Archives
and partial downloads stay in data.download_dir, so a re-run reuses them. See
facegan/data/download.py and docs/data.md.
"""

from __future__ import annotations

import logging

from facegan import stage_params
from facegan.data.download import prepare
from facegan.errors import stage_main
from facegan.paths import RAW_DIR
from stages import start_stage


@stage_main(exclusive=True)
def main() -> None:
    start_stage()
    view = stage_params.load("download")
    record = prepare(view.data, view.seed, RAW_DIR)
    logging.info("data.source=%s: %d images under %s", record.source, record.count, record.image_root)


if __name__ == "__main__":
    main()
