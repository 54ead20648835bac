"""Face detection (MTCNN, facenet-pytorch) and five-landmark similarity alignment.

Detection: MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks") finds boxes, probabilities and five landmarks (eye centres,
nose tip, mouth corners). We run it in batches of equal-sized RGB images (its batched pyramid
needs one size), keep every candidate (keep_all, because its selection step crashes on a batch
holding an image without a face) and pick the face ourselves: exactly one face whose probability
is at least `min_confidence` and whose box side is at least `min_face_size`; several such faces
are rejected or reduced to the largest, as `multi_face` says.

Alignment: the least-squares similarity (rotation, uniform scale, translation; Umeyama 1991,
weighted) that maps the five landmarks onto a canonical template: eyes level, `eye_distance` of
the crop side apart, their line `eye_height` of the side from the top, nose and mouth corners at
mean-face offsets measured in inter-ocular distances. The eyes weigh more than nose and mouth
(`landmark_weights`) so they land on the template; the other three keep the scale stable for
turned heads. The crop is sampled at a supersampled size where the source is not minified, then
resized with an anti-aliased bicubic filter to the study resolution, so small faces do not alias.

Coordinates: continuous pixel space (pixel i covers [i, i+1)); MTCNN reports pixel indices,
hence the half-pixel shift in `detect`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Nose tip and mouth corners relative to the eye midpoint, in inter-ocular distances (x right,
# y down); the mean-face geometry of the widely used five-point ArcFace template.
NOSE_OFFSET = (0.0, 0.571)
MOUTH_OFFSET = (0.414, 1.154)
MAX_SUPERSAMPLED_SIDE = 2048


def template_points(resolution: int, eye_distance: float, eye_height: float) -> np.ndarray:
    """The five canonical landmarks (left eye, right eye, nose, mouth left, mouth right) in pixels."""
    iod = eye_distance * resolution
    cx, ey = 0.5 * resolution, eye_height * resolution
    return np.array(
        [
            (cx - iod / 2, ey),
            (cx + iod / 2, ey),
            (cx + NOSE_OFFSET[0] * iod, ey + NOSE_OFFSET[1] * iod),
            (cx - MOUTH_OFFSET[0] * iod, ey + MOUTH_OFFSET[1] * iod),
            (cx + MOUTH_OFFSET[0] * iod, ey + MOUTH_OFFSET[1] * iod),
        ],
        dtype=np.float64,
    )


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights=None) -> np.ndarray:
    """Weighted least-squares similarity src -> dst (Umeyama 1991), as a 2x3 matrix [sR | t]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    var_s = float(w @ (s0**2).sum(1))
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def warp_face(image: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """Crop `image` (H, W, 3 uint8) through `matrix` (source px -> output px) at `resolution`.

    Sampled bicubically at k x resolution with k the smallest integer that keeps the sampling no
    coarser than the source (capped), then downsized with antialias=True; outside the photo the
    image is mirrored (reflection padding) rather than filled with a colour.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    k = max(1, min(int(np.ceil(1.0 / scale - 1e-6)), MAX_SUPERSAMPLED_SIDE // resolution))
    side = resolution * k
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    centres = (np.arange(side, dtype=np.float64) + 0.5) / k  # output pixel centres, output px
    gx, gy = np.meshgrid(centres, centres)
    src = np.stack([gx, gy], -1) @ inverse[:, :2].T + inverse[:, 2]  # source continuous coords
    h, w = image.shape[:2]
    grid = np.empty_like(src)
    grid[..., 0] = src[..., 0] / w * 2 - 1  # align_corners=False normalisation
    grid[..., 1] = src[..., 1] / h * 2 - 1
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float()
    out = F.grid_sample(
        tensor, torch.from_numpy(grid)[None].float(), mode="bicubic", padding_mode="reflection", align_corners=False
    )
    if k > 1:
        out = F.interpolate(out, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0).numpy()


@dataclass
class Detection:
    """The outcome for one image: the chosen face, or the reason none was kept."""

    reason: str  # "kept" or a rejection reason
    probability: float | None = None
    box: np.ndarray | None = None  # x0, y0, x1, y1 (continuous source px)
    landmarks: np.ndarray | None = None  # (5, 2) continuous source px
    faces_found: int = 0
    detail: str = ""
    all_probabilities: list = field(default_factory=list)


REJECTION_REASONS = (
    "unreadable",
    "image_too_small",
    "no_face",
    "low_confidence",
    "face_too_small",
    "multiple_faces",
    "detector_error",
)


class FaceAligner:
    """MTCNN detection in batches plus the similarity alignment, configured by `data` params."""

    def __init__(self, data_params: dict, device: torch.device):
        from facenet_pytorch import MTCNN  # imported here: the synthetic path never needs it

        mt, al = data_params["mtcnn"], data_params["align"]
        self.device = device
        self.min_confidence = float(mt["min_confidence"])
        self.min_face_size = float(mt["min_face_size"])
        self.multi_face = mt["multi_face"]
        self.max_side = int(mt["max_side"])
        self.cpu_threads = int(mt["cpu_threads"])
        self.resolution = int(data_params["resolution"])
        self.template = template_points(self.resolution, al["eye_distance"], al["eye_height"])
        self.weights = np.asarray(al["landmark_weights"], np.float64)
        # keep_all: MTCNN's own face selection fails on a batch that holds a face-less image
        self.mtcnn = MTCNN(
            min_face_size=int(self.min_face_size), keep_all=True, select_largest=False, device=device
        ).eval()

    # -- detection --------------------------------------------------------------------------
    def detect(self, images: list[np.ndarray]) -> list[Detection]:
        """Detect in each image (any sizes; grouped into equal-size batches for MTCNN)."""
        results: list[Detection | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if min(image.shape[:2]) < self.min_face_size:
                results[i] = Detection("image_too_small", detail=f"{image.shape[1]}x{image.shape[0]} px")
            else:
                groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            for i, detection in zip(indices, self._detect_same_size([images[i] for i in indices])):
                results[i] = detection
        return results

    def _detect_same_size(self, images: list[np.ndarray]) -> list[Detection]:
        h, w = images[0].shape[:2]
        factor = min(1.0, self.max_side / max(h, w))
        batch = torch.from_numpy(np.stack(images))
        if factor < 1.0:  # a huge photo: detect on a smaller copy, align on the original
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            small = F.interpolate(batch.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True)
            batch = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            factor_xy = np.array([w / size[1], h / size[0]])
        else:
            factor_xy = np.array([1.0, 1.0])
        try:
            boxes, probs, points = self._run_mtcnn(batch)
        except Exception as err:  # noqa: BLE001 - MTCNN internals; retried per image below
            if len(images) == 1:
                log.warning("MTCNN failed on an image (%s: %s); rejected as detector_error", type(err).__name__, err)
                return [Detection("detector_error", detail=f"{type(err).__name__}: {err}")]
            log.warning("MTCNN failed on a batch (%s); retrying its %d images one by one", err, len(images))
            return [d for image in images for d in self._detect_same_size([image])]
        return [self._choose(b, p, marks, factor_xy) for b, p, marks in zip(boxes, probs, points)]

    def _run_mtcnn(self, batch: torch.Tensor):
        previous = torch.get_num_threads()
        if self.device.type == "cpu" and self.cpu_threads > 0:
            # MTCNN's cascade resizes each candidate box separately: thousands of tiny parallel
            # regions, which more threads slow down (10x on a busy 2-core machine, measured).
            torch.set_num_threads(self.cpu_threads)
        try:
            with torch.inference_mode():
                return self.mtcnn.detect(batch.to(self.device), landmarks=True)
        finally:
            torch.set_num_threads(previous)

    def _choose(self, boxes, probs, points, factor_xy: np.ndarray) -> Detection:
        # MTCNN returns object arrays (None where no face); cast before any arithmetic.
        if boxes is None or len(boxes) == 0:
            return Detection("no_face")
        boxes = np.asarray(list(boxes), dtype=np.float64).reshape(-1, 4)
        probs = np.asarray(list(probs), dtype=np.float64).reshape(-1)
        points = np.asarray(list(points), dtype=np.float64).reshape(-1, 5, 2)
        boxes = (boxes + 0.5) * np.tile(factor_xy, 2)
        points = (points + 0.5) * factor_xy
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        confident = probs >= self.min_confidence
        found = int(len(probs))
        rounded = [round(float(p), 4) for p in probs]
        if not confident.any():
            best = int(np.argmax(probs))
            return Detection(
                "low_confidence",
                float(probs[best]),
                boxes[best],
                points[best],
                found,
                f"best probability {probs[best]:.3f} < {self.min_confidence}",
                rounded,
            )
        passing = np.flatnonzero(confident & (sides >= self.min_face_size))
        if len(passing) == 0:
            best = int(np.flatnonzero(confident)[np.argmax(sides[confident])])
            return Detection(
                "face_too_small",
                float(probs[best]),
                boxes[best],
                points[best],
                found,
                f"face side {sides[best]:.0f} px < {self.min_face_size:.0f}",
                rounded,
            )
        if len(passing) > 1 and self.multi_face == "reject":
            best = int(passing[np.argmax(sides[passing])])
            return Detection(
                "multiple_faces",
                float(probs[best]),
                boxes[best],
                points[best],
                found,
                f"{len(passing)} confident faces",
                rounded,
            )
        best = int(passing[np.argmax(sides[passing])])
        return Detection("kept", float(probs[best]), boxes[best], points[best], found, "", rounded)

    # -- alignment --------------------------------------------------------------------------
    def transform(self, landmarks: np.ndarray) -> np.ndarray:
        return similarity_transform(landmarks, self.template, self.weights)

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return warp_face(image, self.transform(landmarks), self.resolution)

    def process(self, images: list[np.ndarray]) -> tuple[list[Detection], list[np.ndarray | None]]:
        detections = self.detect(images)
        faces = [self.align(image, d.landmarks) if d.reason == "kept" else None for image, d in zip(images, detections)]
        return detections, faces
