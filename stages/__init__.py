"""One script per DVC stage; run as `python -m stages.<name>` from the repository root.

Each script reads its params view (facegan.stage_params), calls the library, and writes what
dvc.yaml declares as its outputs; dvc.yaml itself is generated from these scripts' imports
(facegan/pipeline.py).
"""

from __future__ import annotations

import argparse
import logging


def start_stage() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def start_model_stage(doc: str) -> str:
    """Common start of the per-model stages (train-<model>, evaluate-<model>): the model name, logging set up."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", help="a model of params.yaml's `models` section")
    args = parser.parse_args()
    start_stage()
    return args.model
