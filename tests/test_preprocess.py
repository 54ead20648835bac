"""The preprocess library end to end on a small folder of real photographs: kept faces in the
cache, rejections with their reasons in the manifest (no face, corrupt header, truncated file, an
image too large to decode), report counts (grey sources among them), and a resumed run that equals
an uninterrupted one (sequential and parallel paths). Also the fast synthetic path, and how
`load_rgb` decodes 16-bit, float and grey images."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from skimage import data as skdata

from facegan.data.cache import FaceCache
from facegan.data.download import prepare_folder, prepare_synthetic
from facegan.data.preprocess import GREY_SOURCE, MAX_DECODE_PIXELS, load_rgb, preprocess
from facegan.errors import UserError
from facegan.params import load_params
from facegan.settings import DataSettings

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "faces"


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit colour) or would have to hold in
    memory first (a huge image): `rows` are the raw scanlines, repeated to `height`."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    scanlines = b"".join(b"\x00" + rows[y % len(rows)] for y in range(height)) if rows else b""  # filter 0: none
    pixels = chunk(b"IDAT", zlib.compress(scanlines))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def _png_without_pixels(width: int, height: int) -> bytes:
    """A 1-bit PNG of that size whose pixel data is empty: Pillow reads its size, decoding would fail."""
    return _png(width, height, 1, 0, [])


def _huge_blank_png(side: int) -> bytes:
    """A 1-bit side x side PNG of zeros: kilobytes on disk, side**2 pixels (x3 bytes) decoded."""
    return _png(side, side, 1, 0, [bytes((side + 7) // 8)])


def _grey16_astronaut() -> Image.Image:
    grey = np.asarray(Image.fromarray(skdata.astronaut()).resize((256, 256), Image.LANCZOS).convert("L"))
    return Image.fromarray(grey.astype(np.uint16) * 257)  # 8 -> 16 bits: 255 -> 65535


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
    _grey16_astronaut().save(folder / "h_astronaut_grey16.png")  # a 16-bit grey PNG: Pillow mode I;16
    (folder / "i_too_large.png").write_bytes(_huge_blank_png(10_000))
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
    assert image is None and why.startswith("unreadable: UnidentifiedImageError")
    image, why = load_rgb(photo_folder / "d_truncated.jpg")
    assert image is None and why.startswith("unreadable: ") and "truncated" in why


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
    # a 16-bit grey face is found (not clipped to white) and kept, marked as grey and counted
    grey16 = rows["h_astronaut_grey16.png"]
    assert grey16["status"] == "kept" and grey16["detail"] == GREY_SOURCE
    assert rows["i_too_large.png"]["reason"] == "too_large" and "10000x10000" in rows["i_too_large.png"]["detail"]
    kept = [row for row in rows.values() if row["status"] == "kept"]
    assert report["kept"] == len(kept) and report["rejected"]["unreadable"] == 2 and report["rejected"]["no_face"] == 1
    assert report["kept_grey_sources"] == 1 and report["rejected"]["too_large"] == 1
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
    assert report["kept_grey_sources"] == full_run[1]["kept_grey_sources"] == 1
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


def _saved(tmp: Path, image: Image.Image, name: str) -> Path:
    image.save(tmp / name)
    return tmp / name


GREYS_16 = np.array([[0, 257, 32768, 65535]], np.uint16)  # 8-bit 0, 1, 128, 255 (v -> round(v / 257))


@pytest.mark.parametrize(
    ("name", "mode"),
    [("grey.png", "I;16"), ("grey.tif", "I;16"), ("grey_big_endian.tif", "I;16B"), ("grey_32bit.tif", "I")],
)
def test_16_bit_grey_images_scale_to_8_bits(tmp_path, name, mode):
    if mode == "I;16B":
        image = Image.frombytes(mode, (4, 1), GREYS_16.astype(">u2").tobytes())
    else:
        image = Image.fromarray(GREYS_16.astype(np.int32) if mode == "I" else GREYS_16)
    path = _saved(tmp_path, image, name)
    assert Image.open(path).mode == mode  # Pillow 13 opens a 16-bit grey PNG as I;16 (older ones as I)
    rgb, note = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3) and note == GREY_SOURCE
    np.testing.assert_array_equal(rgb, np.repeat([[[0], [1], [128], [255]]], 3, axis=2))  # mid-grey 128, not 255


def test_16_bit_pngs_of_a_grey_face_and_of_colours_load_as_their_8_bit_pixels(tmp_path):
    face = _grey16_astronaut()
    rgb, _ = load_rgb(_saved(tmp_path, face, "face16.png"))
    np.testing.assert_array_equal(rgb, np.repeat(np.asarray(face)[..., None] // 257, 3, axis=2))
    # Pillow itself opens a 16-bit RGB PNG as 8-bit RGB (the high bytes): colours kept, no grey note
    (tmp_path / "colour16.png").write_bytes(_png(1, 1, 16, 2, [np.array([65535, 32768, 257], ">u2").tobytes()]))
    rgb, note = load_rgb(tmp_path / "colour16.png")
    assert rgb.tolist() == [[[255, 128, 1]]] and note == ""


def test_float_tiff_in_0_1_scales_by_255(tmp_path):
    path = _saved(tmp_path, Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)), "float.tif")
    assert Image.open(path).mode == "F"
    rgb, note = load_rgb(path)
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 255] and (rgb == rgb[..., :1]).all() and note == GREY_SOURCE


@pytest.mark.parametrize(
    ("pixels", "detail"),
    [
        (np.array([[0.0, 2.5]], np.float32), "float pixels span 0..2.5, outside [0, 1]"),
        (np.array([[-1.0, 0.5]], np.float32), "float pixels span -1..0.5, outside [0, 1]"),
        (np.array([[0.5, np.nan, np.inf]], np.float32), "float pixels: 2 are NaN or infinite"),
        (np.array([[0, 70000]], np.int32), "mode I pixels span 0..70000, outside 16-bit 0..65535"),
    ],
    ids=["float_above_1", "float_negative", "float_not_finite", "int32_beyond_16_bits"],
)
def test_pixels_of_unknown_scale_are_refused_saying_why(tmp_path, pixels, detail):
    image, why = load_rgb(_saved(tmp_path, Image.fromarray(pixels), "odd.tif"))
    assert image is None and why == f"unsupported_pixels: {detail}"


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_grey_images_decode_as_rgb_with_a_grey_note(tmp_path, mode):
    grey = Image.fromarray(np.array([[0, 100, 255]], np.uint8)).convert(mode)
    rgb, note = load_rgb(_saved(tmp_path, grey, "grey.png"))
    assert note == GREY_SOURCE and rgb.shape == (1, 3, 3)
    np.testing.assert_array_equal(rgb, np.repeat(np.asarray(grey.convert("L"))[..., None], 3, axis=2))
    _, colour_note = load_rgb(_saved(tmp_path, grey.convert("RGB"), "colour.png"))
    assert colour_note == ""


def _no_decoding(monkeypatch) -> None:
    def decode(self):
        raise AssertionError("decoded an image over the pixel budget")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


def test_an_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    # 100M pixels: past Pillow's warning (89M), short of its error (179M), 12 KB on disk, ~2 GB decoded
    path = tmp_path / "huge.png"
    path.write_bytes(_huge_blank_png(10_000))
    assert path.stat().st_size < 100_000
    _no_decoding(monkeypatch)
    image, why = load_rgb(path)
    assert image is None
    assert why == f"too_large: 10000x10000 px = 100,000,000 pixels > the {MAX_DECODE_PIXELS:,}-pixel limit; not decoded"


def test_a_decompression_bomb_is_refused_as_too_large(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_without_pixels(30_000, 30_000))  # Pillow refuses it at open, from the header
    _no_decoding(monkeypatch)
    image, why = load_rgb(path)
    assert image is None and why.startswith("too_large: ") and "900000000 pixels" in why
