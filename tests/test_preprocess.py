"""The preprocess library end to end on a small folder of real photographs: kept faces in the
cache, rejections with their reasons in the manifest (no face, corrupt header, truncated file),
report counts, and a resumed run that equals an uninterrupted one (sequential and parallel paths).
Also the fast synthetic path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from facegan.data.cache import FaceCache
from facegan.data.download import prepare_folder, prepare_synthetic
from facegan.data.preprocess import load_rgb, preprocess
from facegan.errors import UserError
from facegan.params import load_params
from facegan.settings import DataSettings

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "faces"


def _data(tmp: Path, **changes) -> DataSettings:
    data = load_params(overrides={"profile": "study"})["data"]
    data.update(source="folder", resolution=64, num_faces=100, checkpoint_every=1)
    data["mtcnn"]["batch_size"] = 2
    data.update(changes)
    return DataSettings.model_validate(data)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).resize((256, 256), Image.LANCZOS).save(folder / "a_astronaut.png")
    Image.fromarray(skdata.coffee()).resize((300, 200)).save(folder / "b_coffee.jpg")
    (folder / "c_corrupt_header.jpg").write_bytes(b"\x00\x01not an image at all" * 20)
    Image.open(folder / "a_astronaut.png").save(folder / "d_truncated.jpg", quality=90)
    cut = (folder / "d_truncated.jpg").read_bytes()
    (folder / "d_truncated.jpg").write_bytes(cut[: len(cut) // 2])
    # two more faces, so the interrupted-run test has images after its stop without ../shared
    astronaut = Image.open(folder / "a_astronaut.png")
    astronaut.transpose(Image.FLIP_LEFT_RIGHT).save(folder / "f_astronaut_mirrored.png")
    astronaut.resize((224, 224), Image.LANCZOS).save(folder / "g_astronaut_smaller.png")
    if (SHARED / "celeba_align").is_dir():
        for path in sorted((SHARED / "celeba_align").glob("*.jpg"))[:3]:
            (folder / f"e_{path.name}").write_bytes(path.read_bytes())
    return folder


def _run(tmp: Path, folder: Path, **kwargs):
    data = _data(tmp)
    prepare_folder(tmp / "raw", str(folder))
    return preprocess(data, tmp / "raw", tmp / "faces", tmp / "report.json", device="cpu", **kwargs)


def _manifest(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["source_file"]: row for row in csv.DictReader(handle)}


def test_corrupt_files_are_rejected_not_raised(photo_folder):
    image, why = load_rgb(photo_folder / "c_corrupt_header.jpg")
    assert image is None and "UnidentifiedImageError" in why
    image, why = load_rgb(photo_folder / "d_truncated.jpg")
    assert image is None and "truncated" in why


@pytest.fixture(scope="module")
def full_run(photo_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    return tmp, _run(tmp, photo_folder)


def test_cache_manifest_and_report(full_run):
    tmp, report = full_run
    rows = _manifest(tmp / "faces" / "manifest.csv")
    assert rows["a_astronaut.png"]["status"] == "kept" and float(rows["a_astronaut.png"]["probability"]) > 0.95
    assert len(rows["a_astronaut.png"]["landmarks"].split()) == 10 and len(rows["a_astronaut.png"]["box"].split()) == 4
    assert rows["b_coffee.jpg"]["reason"] == "no_face"
    assert rows["c_corrupt_header.jpg"]["reason"] == "unreadable"
    assert rows["d_truncated.jpg"]["reason"] == "unreadable"
    kept = [row for row in rows.values() if row["status"] == "kept"]
    assert report["kept"] == len(kept) and report["rejected"]["unreadable"] == 2 and report["rejected"]["no_face"] == 1
    assert report["considered"] == len(rows) and report["images_per_s"] > 0
    assert json.loads((tmp / "report.json").read_text()) == report
    cache = FaceCache(tmp / "faces")
    assert len(cache) == len(kept) and cache.resolution == 64 and cache.meta.source == "folder"
    assert [int(row["cache_index"]) for row in kept] == list(range(len(kept)))
    assert cache.batch([0]).shape == (1, 3, 64, 64)
    assert (tmp / "faces" / "preview.png").is_file()
    assert not (tmp / "faces.partial").exists()


def test_num_faces_keeps_the_first_accepted(photo_folder, tmp_path, full_run):
    data = _data(tmp_path, num_faces=1)
    prepare_folder(tmp_path / "raw", str(photo_folder))
    report = preprocess(data, tmp_path / "raw", tmp_path / "faces", tmp_path / "report.json", device="cpu")
    assert report["kept"] == 1
    first = FaceCache(full_run[0] / "faces").uint8([0])
    np.testing.assert_array_equal(FaceCache(tmp_path / "faces").uint8([0]), first)


@pytest.mark.parametrize("workers", [0, 2], ids=["sequential", "2_workers"])
def test_interrupted_run_resumes_to_the_same_result(photo_folder, tmp_path, full_run, workers):
    partial = _run(tmp_path, photo_folder, stop_after=3, workers=workers)
    assert partial == {"interrupted_at": 4, "kept": 1}  # batches of 2: stops after the 2nd batch
    work = tmp_path / "faces.partial"
    state = json.loads((work / "progress.json").read_text())
    assert state["position"] == 4
    # what a crash after the checkpoint leaves behind: rows and pixels that were never saved
    with open(work / "manifest.partial.csv", "a") as handle:
        handle.write("zz_lost.jpg,kept,kept,,,,,9\n")
    report = _run(tmp_path, photo_folder, workers=workers)
    assert report["resumed_from"] == 4
    # the report counts the whole run, not only the session after the resume
    assert report["detected"] == full_run[1]["detected"] and report["considered"] == full_run[1]["considered"]
    assert _manifest(tmp_path / "faces" / "manifest.csv") == _manifest(full_run[0] / "faces" / "manifest.csv")
    np.testing.assert_array_equal(FaceCache(tmp_path / "faces").faces, FaceCache(full_run[0] / "faces").faces)


def test_no_accepted_face_says_where_each_rejection_reason_is(photo_folder, tmp_path):
    folder = tmp_path / "no_faces"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((photo_folder / "b_coffee.jpg").read_bytes())
    with pytest.raises(UserError) as err:
        _run(tmp_path, folder)
    message = str(err.value)
    assert "no face was accepted among 1 images" in message and "data.mtcnn" in message
    manifest = Path(message.split("rejection reason is in ")[1].split(";")[0])
    assert _manifest(manifest)["coffee.jpg"]["reason"] == "no_face"
    assert not (tmp_path / "faces").exists()


def test_synthetic_path_stays_fast_and_complete(tmp_path):
    data = _data(tmp_path, source="synthetic", num_faces=10, synthetic_images=12, resolution=32)
    prepare_synthetic(tmp_path / "raw", 12, 32, seed=0)
    report = preprocess(data, tmp_path / "raw", tmp_path / "faces", tmp_path / "report.json")
    assert report["kept"] == 10 and report["mtcnn"] is False
    assert FaceCache(tmp_path / "faces").faces.shape == (10, 32, 32, 3)
