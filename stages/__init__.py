"""One script per DVC stage; run as `python -m stages.<name>` from the repository root."""
from __future__ import annotations

import argparse
import logging

from facegan.params import MODEL_NAMES


def start_model_stage(doc: str) -> str:
    """Common start of the per-model stages (train@, evaluate@): parse the model name, set up logging."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", choices=MODEL_NAMES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.model
