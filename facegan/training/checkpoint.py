"""Atomic, weights-only checkpoints of a training run, and the scratch folder that keeps them.

DVC removes a stage's outputs before it runs the stage again, so resumable checkpoints live
outside them, in `checkpoints/<model>/<run key>/`, where the run key hashes every param that
defines the run: an interrupted `dvc repro` finds its checkpoint again, a changed param starts
afresh. Files hold tensors and plain containers only, so `torch.load(weights_only=True)` reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from facegan.errors import UserError
from facegan.io import atomic_path

log = logging.getLogger(__name__)
CHECKPOINT_ROOT = Path("checkpoints")


def run_key(run_params: dict) -> str:
    return hashlib.sha256(json.dumps(run_params, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_dir(model: str, run_params: dict, root: Path = CHECKPOINT_ROOT) -> Path:
    return root / model / run_key(run_params)


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it and the fix
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to start over") from err


def latest(directory: Path) -> Path | None:
    path = directory / "last.pt"
    return path if path.exists() else None
