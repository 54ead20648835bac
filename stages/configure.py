"""Stage `configure`: merge params.yaml with its profile and write each stage's view of it.

Writes runs/config/<view>.json for download, preprocess, reference_stats, evaluate, report and
each model (facegan/stage_params.py says why). Every later stage depends on its own file instead
of on params.yaml, so DVC re-runs only the stages whose effective params changed. Imports no
torch, so it starts in a second.
"""

from __future__ import annotations

import logging

from facegan import stage_params
from facegan.errors import stage_main
from facegan.params import DEFAULT_PATH, committed_params, load_params, shadowed_edits
from stages import start_stage


@stage_main(resumable=False)
def main() -> None:
    start_stage()
    params = load_params()
    notes = shadowed_edits(DEFAULT_PATH, committed_params())
    for note in notes:
        logging.warning("%s", note)
    stage_params.write_views(params, notes=notes)


if __name__ == "__main__":
    main()
