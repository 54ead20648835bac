"""Stage `select`: one file per model saying whether this experiment trains it.

Why a stage: train@<model> depends on its own file only, so `dvc exp run -S model=styleswin`
changes the files of the other models (they are skipped cheaply) while styleswin's file keeps
its content `on` and its cached training is reused; back at `model: all`, DVC's run-cache
restores every model trained before. The stage imports no torch, so it starts in a second.
"""
from __future__ import annotations

from facegan.errors import stage_main
from facegan.io import write_text
from facegan.params import MODEL_NAMES, load_params
from facegan.paths import selection_file


@stage_main
def main() -> None:
    params = load_params()
    for name in MODEL_NAMES:
        chosen = params["model"] in ("all", name)
        write_text(selection_file(name), "on\n" if chosen else f"off: model={params['model']}\n")


if __name__ == "__main__":
    main()
