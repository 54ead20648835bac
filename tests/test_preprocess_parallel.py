"""The parallel preprocess (worker processes, fast MTCNN pools, batched warps) against the sequential
reference (`workers=0`): the same manifest rows, so the same kept faces in the same order, and crops
within 1/255 of the reference's (on CPU equal, pixel for pixel), on real CelebA photographs; a worker
that dies is a one-line error."""

from __future__ import annotations

import csv
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from facegan.data import preprocess as preprocess_module
from facegan.data.cache import FaceCache
from facegan.data.download import prepare_folder
from facegan.data.preprocess import preprocess
from facegan.errors import UserError
from facegan.params import load_params
from facegan.settings import DataSettings

CELEBA = Path(__file__).resolve().parents[1] / ".." / "shared" / "faces" / "celeba_align"
IMAGES = 80


def _data(raw: Path, **changes) -> DataSettings:
    data = load_params(overrides={"profile": "study"})["data"]
    data.update(source="folder", num_faces=10**6, checkpoint_every=1, **changes)
    data["mtcnn"]["batch_size"] = 16  # 5 chunks: more than the 2 x workers the parallel path keeps in flight
    return DataSettings.model_validate(data)


def _rows(cache: Path) -> list[dict]:
    with open(cache / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def celeba_folder(tmp_path_factory) -> Path:
    if not CELEBA.is_dir():
        pytest.skip(f"{CELEBA} is absent: the CelebA subset in ../shared/faces is needed to compare on real faces")
    folder = tmp_path_factory.mktemp("celeba")
    for path in sorted(CELEBA.glob("*.jpg"))[:IMAGES]:
        (folder / path.name).symlink_to(path.resolve())
    (folder / "000000_corrupt.jpg").write_bytes(b"not a jpeg" * 50)  # rejected alike by both paths
    return folder


def _run(folder: Path, out: Path, workers: int) -> dict:
    prepare_folder(out / "raw", str(folder))
    data = _data(out / "raw")
    return preprocess(data, out / "raw", out / "faces", out / "report.json", device="cpu", workers=workers)


def test_parallel_path_keeps_the_reference_faces_in_order(celeba_folder, tmp_path):
    reference = _run(celeba_folder, tmp_path / "sequential", workers=0)
    parallel = _run(celeba_folder, tmp_path / "parallel", workers=2)
    rows = _rows(tmp_path / "parallel" / "faces")
    assert rows == _rows(tmp_path / "sequential" / "faces")  # same reasons, probabilities, landmarks, indices
    assert len(rows) == IMAGES + 1 and rows[0]["reason"] == "unreadable"
    assert parallel["kept"] == reference["kept"] >= IMAGES - 5
    assert parallel["workers"] == 2 and parallel["busy_s"]["detect"] > 0
    ours = FaceCache(tmp_path / "parallel" / "faces")
    theirs = FaceCache(tmp_path / "sequential" / "faces")
    assert ours.faces.shape == theirs.faces.shape == (reference["kept"], 128, 128, 3)
    assert np.abs(ours.faces.astype(np.int16) - theirs.faces).mean() <= 1.0  # within 1/255 of the range
    # on CPU the batched warps sample through the reference's grids: equal pixels, so one fingerprint
    assert ours.fingerprint == theirs.fingerprint


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork to break a worker")
def test_a_worker_that_dies_is_a_one_line_error(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"x")
    # a forked worker runs this module's load_rgb: exiting there is a worker killed mid-chunk (the OOM killer)
    monkeypatch.setattr(preprocess_module, "load_rgb", lambda path: preprocess_module.os._exit(9))
    with pytest.raises(UserError, match="worker process died.*resume"):
        _run(folder, tmp_path / "out", workers=1)
