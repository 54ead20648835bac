"""MTCNN detection and similarity alignment on real photographs.

Geometric check by re-detection: the aligned 128x128 output goes through MTCNN again and its eye
landmarks must lie within 2 px of the template's eyes, for the astronaut photo as given, rotated
by 30 degrees, scaled down and up, mirrored and pasted into a larger canvas, and for frontal
CelebA photos. The fast path (exact max pools, batched warps) against its references: torch's
pools bit for bit, `warp_face` within 1/255, the same detections as the reference aligner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from facegan.data.align import (
    CeilModeMaxPool2d,
    FaceAligner,
    apply_transform,
    similarity_transform,
    template_points,
    warp_face,
    warp_faces,
)
from facegan.params import load_params
from facegan.settings import DataSettings

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "faces"
TOLERANCE_PX = 2.0


@pytest.fixture(scope="module")
def aligner():
    data = load_params(overrides={"profile": "study"})["data"]
    data["resolution"] = 128
    return FaceAligner(DataSettings.model_validate(data), torch.device("cpu"))


def _eye_error(aligner, image) -> float:
    detection = aligner.detect([image])[0]
    assert detection.reason == "kept", detection.detail
    face = aligner.align(image, detection.landmarks)
    assert face.shape == (128, 128, 3) and face.dtype == np.uint8
    again = aligner.detect([face])[0]
    assert again.reason == "kept", again.detail
    return float(np.abs(again.landmarks[:2] - aligner.template[:2]).max())


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = np.radians(23), 0.37, np.array([11.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    matrix = similarity_transform(src, dst, [1, 1, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(apply_transform(matrix, src), dst, atol=1e-9)
    mirrored = dst * [-1, 1]  # a reflection is not a similarity: the fit must not produce one
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


def test_template_has_level_eyes_at_the_params():
    points = template_points(128, 0.30, 0.40)
    assert points[0, 1] == points[1, 1] == pytest.approx(51.2)
    assert points[1, 0] - points[0, 0] == pytest.approx(38.4)
    assert points[:2, 0].mean() == pytest.approx(64.0)


def test_downscaling_is_antialiased():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: aliasing would turn them into bold bands
    out = warp_face(stripes, np.array([[0.25, 0, 0], [0, 0.25, 0]]), 128).astype(float)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 4


@pytest.mark.parametrize("variant", ["original", "rotated_30", "scaled_down", "scaled_up", "flipped", "pasted"])
def test_astronaut_eyes_land_on_the_template(aligner, variant):
    photo = Image.fromarray(skdata.astronaut())
    if variant == "rotated_30":
        photo = photo.rotate(30, resample=Image.BICUBIC, expand=True)
    elif variant == "scaled_down":
        photo = photo.resize((384, 384), Image.LANCZOS)
    elif variant == "scaled_up":
        photo = photo.resize((768, 768), Image.BICUBIC)
    elif variant == "flipped":
        photo = photo.transpose(Image.FLIP_LEFT_RIGHT)
    elif variant == "pasted":
        canvas = Image.new("RGB", (1000, 760), (90, 110, 70))
        canvas.paste(photo, (430, 190))
        photo = canvas
    assert _eye_error(aligner, np.asarray(photo)) <= TOLERANCE_PX


def test_faceless_and_small_face_and_mixed_sizes_in_one_call(aligner):
    images = [
        skdata.coffee(),
        np.asarray(Image.fromarray(skdata.astronaut()).resize((256, 256))),
        np.full((30, 30, 3), 128, np.uint8),
        skdata.chelsea(),
    ]
    reasons = [d.reason for d in aligner.detect(images)]
    assert reasons == ["no_face", "kept", "image_too_small", "no_face"]


@pytest.mark.skipif(not (SHARED / "celeba_align").is_dir(), reason="../shared/faces not present")
def test_frontal_celeba_photos_align_onto_the_template(aligner):
    # MTCNN's eye landmarks on a turned head move by several px between views, so the 2 px check
    # applies to frontal faces: nose tip within 10% of the inter-ocular distance of the eye midpoint.
    images = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((SHARED / "celeba_align").glob("*.jpg"))[:8]]
    frontal = []
    for image, detection in zip(images, aligner.detect(images)):
        eyes, nose = detection.landmarks[:2], detection.landmarks[2]
        if abs(nose[0] - eyes[:, 0].mean()) < 0.1 * (eyes[1, 0] - eyes[0, 0]):
            frontal.append(image)
    assert len(frontal) >= 3
    errors = [_eye_error(aligner, image) for image in frontal[:4]]
    assert max(errors) <= TOLERANCE_PX, errors


@pytest.mark.skipif(not (SHARED / "messi5.jpg").is_file(), reason="../shared/faces not present")
def test_face_below_min_face_size_is_rejected_with_its_reason(aligner):
    detection = aligner.detect([np.asarray(Image.open(SHARED / "messi5.jpg").convert("RGB"))])[0]
    assert detection.reason == "face_too_small" and detection.probability > 0.95


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("size", [(9, 9), (10, 13), (22, 22), (65, 53)])
def test_fast_max_pool_equals_torch_bit_for_bit(kernel, size):
    x = torch.randn(3, 5, *size, generator=torch.Generator().manual_seed(0))
    x[0, 0, -1, -1] = 50.0  # a maximum in a window that hangs over the edge (ceil_mode)
    expected = torch.nn.MaxPool2d(kernel, 2, ceil_mode=True)(x)
    assert torch.equal(CeilModeMaxPool2d(kernel, 2)(x), expected)


def _similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    angle = np.radians(angle_deg)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([scale * rot, np.asarray(shift, float)[:, None]])


def test_batched_warps_match_warp_face():
    photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((220, 180), Image.LANCZOS))
    images = torch.from_numpy(np.stack([photo, photo[::-1].copy(), photo[:, ::-1].copy(), photo]))
    # supersampling factors 1, 2, 3 and 1 in one batch, with rotations and a crop that leaves the photo
    matrices = [
        _similarity(0, 1.3, (-40, -10)),
        _similarity(20, 0.5, (10, 5)),
        _similarity(-35, 0.4, (30, 20)),
        _similarity(5, 1.0, (-150, -60)),
    ]
    reference = np.stack([warp_face(image, matrix, 64) for image, matrix in zip(images.numpy(), matrices)])
    np.testing.assert_array_equal(warp_faces(images, matrices, 64), reference)  # CPU: the reference's grids
    on_gpu = warp_faces(images, matrices, 64, exact_grid=False)  # the float32 grids built on a GPU, here on CPU
    difference = np.abs(on_gpu.astype(np.int16) - reference)
    assert difference.mean() <= 1.0 and difference.max() <= 1, (difference.mean(), difference.max())


def test_fast_aligner_detects_as_the_reference(aligner):
    data = load_params(overrides={"profile": "study"})["data"]
    data["resolution"] = 128
    fast = FaceAligner(DataSettings.model_validate(data), torch.device("cpu"), fast=True)
    photo = skdata.astronaut()
    images = [photo, photo[:, ::-1].copy(), skdata.coffee(), np.full((30, 30, 3), 128, np.uint8)]
    reference, reference_faces = aligner.process(images)
    detections, faces = fast.process(images)
    assert (
        [d.reason for d in detections]
        == [d.reason for d in reference]
        == ["kept", "kept", "no_face", "image_too_small"]
    )
    for mine, theirs in zip(detections, reference):
        assert mine.probability == theirs.probability and np.array_equal(mine.landmarks, theirs.landmarks)
    for mine, theirs in zip(faces[:2], reference_faces[:2]):
        np.testing.assert_array_equal(mine, theirs)
    assert faces[2] is None and faces[3] is None
    assert fast.seconds["detect"] > 0 and fast.seconds["align"] > 0
