"""The face cache that training and metrics read: `faces.npy` plus `meta.json`.

Format (directory, `data/faces/` by default):
  faces.npy      uint8 array (N, R, R, 3), RGB, the aligned faces in their deterministic order
  meta.json      facegan.handoff.FaceCacheMeta: source, count, resolution, fingerprint, provenance
  manifest.csv   one row per source image: kept or the rejection reason (written by preprocess)
  preview.png    a grid of the first faces

Why a single uint8 array rather than a PNG folder: training memory-maps it (no decode per step,
~2.5 GB for 50k faces at 128x128), and because PNG is lossless the array holds exactly the pixels
a PNG folder would, so clean-fid statistics computed from it through clean-fid's own resizer equal
those of the folder (`export_png` writes that folder when someone wants one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facegan import handoff
from facegan.errors import UserError
from facegan.io import atomic_dir, atomic_path, disk_full_error, is_disk_full, write_json

FACES_FILE = "faces.npy"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.csv"


def reserve(path: Path, n_bytes: int) -> None:
    """Allocate a file's blocks now, so that a full disk is an error here and not a SIGBUS later, when
    a memory-mapped write finds no block to land in."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, n_bytes)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(path, n_bytes, err=err) from err
            raise


def fingerprint_of(faces: np.ndarray) -> str:
    """sha256 of the cached pixels (and their shape): what a training run and reference statistics are of."""
    digest = hashlib.sha256(repr(faces.shape).encode())
    for start in range(0, len(faces), 1024):
        digest.update(np.ascontiguousarray(faces[start : start + 1024]).data)
    return digest.hexdigest()[:16]


class CacheWriter:
    """Append aligned faces to a preallocated array; `finish()` publishes the cache folder atomically.

    The partial array and its count live in `<out_dir>.partial/`, so an interrupted preprocess
    resumes from `count` instead of starting over. The array's disk space is reserved when it is
    created (and checked again on resume), so a disk too small for the cache is a one-line error at
    the start, with the partial state left resumable.
    """

    def __init__(self, out_dir: str | Path, resolution: int, capacity: int, fingerprint: str = ""):
        """`fingerprint` names the inputs (params, file list): a partial run with another one restarts."""
        self.out_dir = Path(out_dir)
        self.work = self.out_dir.with_name(self.out_dir.name + ".partial")
        self.work.mkdir(parents=True, exist_ok=True)
        progress = self.work / "progress.json"
        array_path = self.work / FACES_FILE
        shape = (capacity, resolution, resolution, 3)
        state = json.loads(progress.read_text()) if progress.exists() else None
        resumable = state and state.get("shape") == list(shape) and state.get("fingerprint", "") == fingerprint
        try:
            if resumable and array_path.exists():
                reserve(array_path, array_path.stat().st_size)
                self.faces = np.load(array_path, mmap_mode="r+")
                self.count = int(state["count"])
                self.state = state
            else:
                self.faces = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
                reserve(array_path, array_path.stat().st_size)
                self.count = 0
                self.state = {"shape": list(shape), "count": 0, "fingerprint": fingerprint}
        except OSError as err:
            if is_disk_full(err):
                raise disk_full_error(array_path, int(np.prod(shape)), err=err) from err
            raise
        self.capacity = capacity

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def add(self, face: np.ndarray) -> int:
        if self.full:
            raise ValueError("cache is full")
        self.faces[self.count] = face
        self.count += 1
        return self.count - 1

    def checkpoint(self, **extra) -> None:
        """Persist the count (and any resume state the caller needs) after flushing the array."""
        self.faces.flush()
        self.state.update(extra, count=self.count)
        write_json(self.work / "progress.json", self.state)

    def resume_state(self) -> dict:
        return dict(self.state)

    def finish(
        self,
        source: str,
        synthetic: bool,
        manifest: Path | None = None,
        image_root: str = "",
        align: dict | None = None,
        mtcnn: dict | None = None,
    ) -> Path:
        """Publish faces.npy, meta.json (facegan.handoff.FaceCacheMeta, with the pixels' fingerprint), the
        manifest and a preview as one folder: the old cache stays whole until the new one is complete, and
        never mixes with it. `source` .. `mtcnn`: where the faces came from (FaceCacheMeta's fields)."""
        if self.count == 0:
            raise UserError("no face was accepted: check data.source and the MTCNN thresholds in params.yaml")
        self.faces.flush()
        faces = self.faces[: self.count]
        meta = handoff.FaceCacheMeta(
            source=source,
            synthetic=synthetic,
            count=self.count,
            resolution=self.faces.shape[1],
            fingerprint=fingerprint_of(faces),
            image_root=image_root,
            align=dict(align or {}),
            mtcnn=dict(mtcnn or {}),
        )
        with atomic_dir(self.out_dir) as out:
            with open(out / FACES_FILE, "wb") as handle:
                np.save(handle, np.asarray(faces), allow_pickle=False)
            meta.write(out / META_FILE)
            if manifest is not None:
                shutil.copyfile(manifest, out / MANIFEST_FILE)
            save_grid(np.asarray(faces[: min(self.count, 64)]), out / "preview.png")
        del self.faces, faces
        shutil.rmtree(self.work)
        return self.out_dir


def _corrupt(root: Path, name: str, err: Exception) -> UserError:
    return UserError(
        f"{root / name} is corrupt ({type(err).__name__}: {err}); delete {root} and run `dvc repro preprocess`"
    )


class FaceCache:
    """Read-only view of a finished cache; images come out as float tensors in [-1, 1]."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not (root / FACES_FILE).exists() or not (root / META_FILE).exists():
            raise UserError(f"face cache {root} is missing or incomplete: run `dvc repro preprocess`")
        self.root = root
        self.on_device: torch.Tensor | None = None
        self.meta = handoff.FaceCacheMeta.read(root / META_FILE)
        try:
            self.faces = np.load(root / FACES_FILE, mmap_mode="r")
        except (ValueError, EOFError) as err:  # truncated: ValueError; zero bytes: EOFError (numpy)
            raise _corrupt(root, FACES_FILE, err) from err

    @property
    def fingerprint(self) -> str:
        """What identifies these pixels (recorded by CacheWriter.finish)."""
        return self.meta.fingerprint

    def __len__(self) -> int:
        return self.faces.shape[0]

    @property
    def resolution(self) -> int:
        return self.faces.shape[1]

    def uint8(self, indices) -> np.ndarray:
        return np.asarray(self.faces[np.sort(np.asarray(indices))])

    def batch(self, indices, device="cpu", xflip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Faces `indices` as float NCHW in [-1, 1] on `device`, the masked ones mirrored. From the faces held
        on the device (`to_device`) when they are there: no host-to-device copy per step."""
        if self.on_device is not None and self.on_device.device == torch.device(device):
            images = self.on_device[torch.as_tensor(indices, device=self.on_device.device)]
        else:
            images = torch.from_numpy(np.asarray(self.faces[np.asarray(indices)])).to(device)
        images = images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if xflip_mask is not None:
            images = torch.where(xflip_mask.view(-1, 1, 1, 1).to(images.device), images.flip(3), images)
        return images

    def to_device(self, device: torch.device, mode: str = "auto") -> bool:
        """Hold every face on `device` as uint8 (`train.speed.cache_on_device`): auto puts them on a GPU
        when they take under a quarter of its free memory (50,000 at 128 px: 2.4 GB). Returns whether they are."""
        if mode == "off" or device.type != "cuda":
            return False
        size = self.faces.nbytes
        if mode == "auto" and size > torch.cuda.mem_get_info(device)[0] / 4:
            return False
        self.on_device = torch.from_numpy(np.ascontiguousarray(self.faces)).to(device)
        return True


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, the rounding StyleGAN's tools use."""
    return images.detach().float().mul(127.5).add(128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def save_grid(images: np.ndarray, path: str | Path, columns: int | None = None) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(make_grid(images, columns)).save(tmp, format="PNG")


def export_png(cache: FaceCache, out_dir: str | Path) -> None:
    """Write the cache as a PNG folder (the layout clean-fid's folder functions read)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(len(cache)):
        Image.fromarray(np.asarray(cache.faces[i])).save(out_dir / f"{i:06d}.png")
