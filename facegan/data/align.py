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

Speed (the parallel preprocess, `FaceAligner(fast=True)`): MTCNN's ceil-mode max pools run as
`CeilModeMaxPool2d` on CPU (the same numbers, faster than torch's kernel), and the faces of a
same-size batch are warped together by `warp_faces` on the device MTCNN ran on; `warp_face` and
torch's pools are their references.

Coordinates: continuous pixel space (pixel i covers [i, i+1)); MTCNN reports pixel indices,
hence the half-pixel shift in `detect`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from facegan import settings
from torch import nn

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


def supersampling(matrix: np.ndarray, resolution: int) -> int:
    """k: the smallest integer that keeps sampling at k x resolution no coarser than the source (capped)."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return max(1, min(int(np.ceil(1.0 / scale - 1e-6)), MAX_SUPERSAMPLED_SIDE // resolution))


def sampling_grid(matrix: np.ndarray, k: int, resolution: int, height: int, width: int) -> np.ndarray:
    """grid_sample's grid (side, side, 2), float64: where each supersampled output pixel centre falls in
    the source, normalised for align_corners=False."""
    side = resolution * k
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    centres = (np.arange(side, dtype=np.float64) + 0.5) / k  # output pixel centres, output px
    gx, gy = np.meshgrid(centres, centres)
    src = np.stack([gx, gy], -1) @ inverse[:, :2].T + inverse[:, 2]  # source continuous coords
    grid = np.empty_like(src)
    grid[..., 0] = src[..., 0] / width * 2 - 1
    grid[..., 1] = src[..., 1] / height * 2 - 1
    return grid


def _sample_and_downsize(images: torch.Tensor, grid: torch.Tensor, k: int, resolution: int) -> torch.Tensor:
    """(N, 3, H, W) float + (N, side, side, 2) grid -> (N, 3, R, R) uint8, bicubic then anti-aliased."""
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    if k > 1:
        out = F.interpolate(out, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0, 255).round_().to(torch.uint8)


def warp_face(image: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """Crop `image` (H, W, 3 uint8) through `matrix` (source px -> output px) at `resolution`.

    Sampled bicubically at k x resolution (`supersampling`), then downsized with antialias=True;
    outside the photo the image is mirrored (reflection padding) rather than filled with a colour.
    The reference for `warp_faces`, which does the same for a batch in one call per k.
    """
    k = supersampling(matrix, resolution)
    grid = sampling_grid(matrix, k, resolution, *image.shape[:2])
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float()
    out = _sample_and_downsize(tensor, torch.from_numpy(grid)[None].float(), k, resolution)
    return out[0].permute(1, 2, 0).numpy()


def batch_grid(matrices: list[np.ndarray], k: int, resolution: int, height: int, width: int, device) -> torch.Tensor:
    """`sampling_grid` for a batch (N, side, side, 2), built on `device` in float32.

    Each face's map from output px to the normalised source is folded into one 2x3 matrix, so the grid
    is a broadcast sum: no host-to-GPU copy of a float64 grid built face by face on the CPU. It differs
    from the reference by < 2e-7 (1e-5 source px), which changes a crop by far less than 1/255.
    """
    to_normalised = np.array([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]])
    maps = np.stack([(to_normalised @ np.linalg.inv(np.vstack([m, [0, 0, 1]])))[:2] for m in matrices])
    maps = torch.from_numpy(maps).to(device=device, dtype=torch.float32)[:, :, :, None, None]
    centres = (torch.arange(resolution * k, device=device, dtype=torch.float32) + 0.5) / k  # output px
    grid = maps[:, :, 0] * centres[None, :] + maps[:, :, 1] * centres[:, None] + maps[:, :, 2]  # (N, 2, side, side)
    return grid.permute(0, 2, 3, 1).contiguous()  # grid_sample reads a strided grid 20% slower on CPU


def warp_faces(
    images: torch.Tensor, matrices: list[np.ndarray], resolution: int, exact_grid: bool | None = None
) -> np.ndarray:
    """`warp_face` for a batch: `images` (N, H, W, 3) uint8 on any device (the GPU where MTCNN ran),
    one matrix each -> (N, R, R, 3) uint8 numpy.

    Faces are grouped by their supersampling factor k: one grid_sample and one resize per group
    (CelebA's aligned photos need k = 1 or 2). `exact_grid` (default: on CPU) samples through
    `warp_face`'s own float64 grids, so the crops equal its crops bit for bit and the cache's
    fingerprint does not depend on the path that built it; elsewhere `batch_grid` builds the grids
    on the device.
    """
    height, width = images.shape[1:3]
    exact_grid = images.device.type == "cpu" if exact_grid is None else exact_grid
    faces = np.empty((len(matrices), resolution, resolution, 3), np.uint8)
    factors = np.array([supersampling(matrix, resolution) for matrix in matrices], dtype=np.int64)
    for k in np.unique(factors).tolist():
        members = np.flatnonzero(factors == k)
        if exact_grid:
            grids = [sampling_grid(matrices[i], k, resolution, height, width) for i in members]
            grid = torch.from_numpy(np.stack(grids)).float().to(images.device)
        else:
            grid = batch_grid([matrices[i] for i in members], k, resolution, height, width, images.device)
        batch = images[torch.from_numpy(members).to(images.device)].permute(0, 3, 1, 2).float()
        faces[members] = _sample_and_downsize(batch, grid, k, resolution).permute(0, 2, 3, 1).cpu().numpy()
    return faces


def _ceil_mode_outputs(size: int, kernel: int, stride: int) -> int:
    """Output length of a ceil_mode pool without padding: the last window must start inside the input."""
    outputs = -(-(size - kernel) // stride) + 1
    return outputs - 1 if (outputs - 1) * stride >= size else outputs


def _max_along(x: torch.Tensor, kernel: int, stride: int, dim: int) -> torch.Tensor:
    size = x.shape[dim]
    outputs = _ceil_mode_outputs(size, kernel, stride)
    step = (slice(None),) * dim + (slice(None, None, stride),)
    out = x.narrow(dim, 0, (outputs - 1) * stride + 1)[step].clone()
    for offset in range(1, kernel):
        inside = min(outputs, -(-(size - offset) // stride))  # the last window may hang over the edge
        if inside > 0:
            window = out.narrow(dim, 0, inside)
            torch.maximum(window, x.narrow(dim, offset, (inside - 1) * stride + 1)[step], out=window)
    return out


class CeilModeMaxPool2d(nn.Module):
    """`nn.MaxPool2d(kernel, stride, ceil_mode=True)` (its reference) with bit-identical output, fast on CPU.

    Why: torch's NCHW max_pool2d CPU kernel took 40% of MTCNN's time on one thread (2 s of 5 s for 320
    CelebA images, measured with torch 2.15); a maximum is exact in any order, so taking it along rows,
    then columns, of strided views gives the same numbers 4-8x faster. Other devices keep torch's kernel.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or min(x.shape[-2:]) < self.kernel_size:  # too small: torch's own error
            return F.max_pool2d(x, self.kernel_size, self.stride, ceil_mode=True)
        return _max_along(_max_along(x, self.kernel_size, self.stride, 3), self.kernel_size, self.stride, 2)


def use_fast_max_pools(net: nn.Module) -> int:
    """Swap `net`'s ceil_mode max pools for `CeilModeMaxPool2d`; returns how many were swapped."""
    swapped = 0
    for name, child in net.named_children():
        plain = isinstance(child, nn.MaxPool2d) and child.padding == 0 and child.dilation == 1
        if plain and child.ceil_mode and isinstance(child.kernel_size, int) and isinstance(child.stride, int):
            setattr(net, name, CeilModeMaxPool2d(child.kernel_size, child.stride))
            swapped += 1
    return swapped


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
    "unreadable",  # this and the next two: given by preprocess.load_rgb, before detection
    "too_large",
    "unsupported_pixels",
    "image_too_small",
    "no_face",
    "low_confidence",
    "face_too_small",
    "multiple_faces",
    "detector_error",
)


class FaceAligner:
    """MTCNN detection in batches plus the similarity alignment, configured by `data` params.

    `fast=True` (the parallel preprocess): exact CPU max pools in MTCNN (`CeilModeMaxPool2d`) and one
    batched warp per same-size batch (`warp_faces`) on the device MTCNN ran on. `fast=False` is the
    reference: torch's pools and a `warp_face` per image, as preprocess did before it ran in parallel.
    `seconds` adds up the time spent detecting and aligning (for the preprocess report).
    """

    def __init__(self, data_params: settings.DataSettings, device: torch.device, fast: bool = False):
        from facenet_pytorch import MTCNN  # imported here: the synthetic path never needs it

        mt, al = data_params.mtcnn, data_params.align
        self.device = device
        self.min_confidence = float(mt.min_confidence)
        self.min_face_size = float(mt.min_face_size)
        self.multi_face = mt.multi_face
        self.max_side = int(mt.max_side)
        self.cpu_threads = int(mt.cpu_threads)
        self.resolution = int(data_params.resolution)
        self.template = template_points(self.resolution, al.eye_distance, al.eye_height)
        self.weights = np.asarray(al.landmark_weights, np.float64)
        # keep_all: MTCNN's own face selection fails on a batch that holds a face-less image
        self.mtcnn = MTCNN(
            min_face_size=int(self.min_face_size), keep_all=True, select_largest=False, device=device
        ).eval()
        self.fast = fast
        self.seconds: Counter = Counter()
        self.fast_max_pools = False  # the report shows it: a CPU run without them is ~25% slower
        if fast and device.type == "cpu":  # CUDA's own max pool is fast
            nets = (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet)
            self.fast_max_pools = sum(use_fast_max_pools(net) for net in nets) > 0
            if not self.fast_max_pools:  # another facenet-pytorch layout: correct, only slower
                log.warning("MTCNN has no ceil_mode max pool to speed up; using torch's pools")

    # -- detection --------------------------------------------------------------------------
    def detect(self, images: list[np.ndarray]) -> list[Detection]:
        """Detect in each image (any sizes; grouped into equal-size batches for MTCNN)."""
        return self._detect_and_warp(images, warp=False)[0]

    def _detect_and_warp(self, images: list[np.ndarray], warp: bool) -> tuple[list[Detection], list]:
        detections: list[Detection | None] = [None] * len(images)
        faces: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if min(image.shape[:2]) < self.min_face_size:
                detections[i] = Detection("image_too_small", detail=f"{image.shape[1]}x{image.shape[0]} px")
            else:
                groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            batch = torch.from_numpy(np.stack([images[i] for i in indices]))
            if self.fast:  # one copy to the GPU serves MTCNN and the warps
                batch = batch.to(self.device)
            start = time.perf_counter()
            found = self._detect_stacked(batch)
            self.seconds["detect"] += time.perf_counter() - start
            for i, detection in zip(indices, found):
                detections[i] = detection
            if warp:
                for i, face in zip(indices, self._warp_kept(batch, found)):
                    faces[i] = face
        return detections, faces

    def _warp_kept(self, batch: torch.Tensor, detections: list[Detection]) -> list[np.ndarray | None]:
        start = time.perf_counter()
        kept = [j for j, detection in enumerate(detections) if detection.reason == "kept"]
        faces: list[np.ndarray | None] = [None] * len(detections)
        if kept:
            matrices = [self.transform(detections[j].landmarks) for j in kept]
            for j, face in zip(kept, warp_faces(batch[kept], matrices, self.resolution)):
                faces[j] = face
        self.seconds["align"] += time.perf_counter() - start
        return faces

    def _detect_stacked(self, batch: torch.Tensor) -> list[Detection]:
        """MTCNN on (N, H, W, 3) uint8 images of one size, on whichever device `batch` is."""
        h, w = batch.shape[1:3]
        factor = min(1.0, self.max_side / max(h, w))
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
            if len(batch) == 1:
                log.warning("MTCNN failed on an image (%s: %s); rejected as detector_error", type(err).__name__, err)
                return [Detection("detector_error", detail=f"{type(err).__name__}: {err}")]
            log.warning("MTCNN failed on a batch (%s); retrying its %d images one by one", err, len(batch))
            return [d for i in range(len(batch)) for d in self._detect_stacked(batch[i : i + 1])]
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
        """Detections, and the aligned face of each kept one (None for the others)."""
        if self.fast:
            return self._detect_and_warp(images, warp=True)
        detections = self.detect(images)
        start = time.perf_counter()
        faces = [self.align(image, d.landmarks) if d.reason == "kept" else None for image, d in zip(images, detections)]
        self.seconds["align"] += time.perf_counter() - start
        return detections, faces
