"""Atomic, weights-only checkpoints of a training run, the scratch folder that keeps them, and its lock.

DVC removes a stage's outputs before it runs the stage again, so resumable checkpoints live
outside them, in `checkpoints/<model>/<run key>/`, where the run key hashes every param that
defines the run and the fingerprint of the face cache it trains on: an interrupted `dvc repro`
finds its checkpoint again, while a changed param or changed data starts afresh instead of mixing
two datasets. Files hold tensors and plain containers only, so `torch.load(weights_only=True)`
reads them.

One process at a time trains a run: `RunLock` is an `io.ExclusiveLock` on `<run>/lock`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from facegan.errors import UserError
from facegan.io import ExclusiveLock, atomic_path, cut_write_error, remove_stale_temporaries

log = logging.getLogger(__name__)
CHECKPOINT_ROOT = Path("checkpoints")
RESUME_FILE = "last.pt"


def run_key(run_params: dict) -> str:
    return hashlib.sha256(json.dumps(run_params, sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_dir(model: str, run_params: dict, root: Path = CHECKPOINT_ROOT) -> Path:
    return root / model / run_key(run_params)


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write without its errno
            cause = cut_write_error(path)
            if cause is None:
                raise
            raise cause from err


def load(path: Path, map_location="cpu", fix: str | None = None) -> dict:
    """A checkpoint's tensors; a missing or unreadable file is one line naming `fix` (what to re-run)."""
    if not path.exists():
        raise UserError(f"{path} is missing: {fix or 're-run the stage that writes it'}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it and the fix
        default = (
            f"delete {path} to start the run over" if path.name == RESUME_FILE else "re-run the stage that wrote it"
        )
        raise UserError(f"{path} cannot be read ({type(err).__name__}): {fix or default}") from err


def latest(directory: Path) -> Path | None:
    path = directory / RESUME_FILE
    return path if path.exists() else None


class RunLock(ExclusiveLock):
    """An exclusive lock on a training run's scratch folder; taking it removes a dead writer's temporaries."""

    def __init__(self, directory: Path, what: str):
        super().__init__(directory / "lock", f"training {what}")

    def __enter__(self) -> RunLock:
        super().__enter__()
        removed = remove_stale_temporaries(self.path.parent)  # their writers are dead: we hold the lock
        if removed:
            log.info("removed %d temporary files of an interrupted run under %s", len(removed), self.path.parent)
        return self
