"""The `preprocess` stage's library: source images -> aligned face cache, manifest and report.

Order is deterministic: CelebA partition (train, val, test; images the partition file does not
list come last) then relative file name, so "the first N accepted faces" is the same set on every
machine. Each image is decoded on a worker thread (an unreadable or corrupt one is rejected as
`unreadable`, never a crash), detected and aligned by `FaceAligner` in batches, and accepted faces
go to `CacheWriter` until N are kept. Every `data.checkpoint_every` images the cache array, the
manifest written so far and the position are saved, so an interrupted run resumes there (a run
with other params or another file list starts over). Synthetic faces are drawn aligned, so they
are only resized (no MTCNN: the demo stays fast).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from facegan.data.cache import CacheWriter
from facegan.errors import UserError
from facegan.io import read_json, write_json

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ["source_file", "status", "reason", "detail", "probability", "box", "landmarks", "cache_index"]
PARTIAL_MANIFEST = "manifest.partial.csv"
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}


def read_partition(path: str | Path | None) -> dict[str, int]:
    if not path:
        return {}
    partition = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{path} line {number} is not '<file> <partition>': use CelebA's list_eval_partition.txt")
        partition[fields[0]] = int(fields[1])
    return partition


def ordered_files(raw_dir: Path, source: dict) -> list[str]:
    """The source's images, relative to its image_root, in the deterministic processing order."""
    listing = raw_dir / "files.txt"
    if listing.exists():
        files = [line.split("\t")[0] for line in listing.read_text().splitlines() if line]
    else:
        files = sorted(p.name for p in Path(source["image_root"]).glob("*.png"))
    partition = read_partition(source.get("partition_file"))
    unknown = len(PARTITION_NAMES)
    return sorted(files, key=lambda name: (partition.get(Path(name).name, unknown), name))


def load_rgb(path: Path) -> tuple[np.ndarray | None, str]:
    """Decode an image to RGB uint8, or return (None, why) for a corrupt or unreadable file."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated or corrupt data raises here, not later
            image = ImageOps.exif_transpose(image)  # phone photos: upright as they are shown
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.array(image, dtype=np.uint8), ""
    except Exception as err:  # noqa: BLE001 - any decoder failure is a rejection with its reason
        return None, f"{type(err).__name__}: {err}"[:200]


def _fmt(values, digits: int = 1) -> str:
    return "" if values is None else " ".join(f"{v:.{digits}f}" for v in np.asarray(values).reshape(-1))


class _Manifest:
    """The manifest rows written so far, in the cache's work folder, truncated on resume."""

    def __init__(self, path: Path, resume_bytes: int | None):
        self.path = path
        if resume_bytes is None or not path.exists():
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(MANIFEST_FIELDS)
        else:
            with open(path, "r+b") as handle:
                handle.truncate(resume_bytes)
        self.handle = open(path, "a", newline="")  # noqa: SIM115 - closed by close(), kept open across batches
        self.writer = csv.DictWriter(self.handle, fieldnames=MANIFEST_FIELDS)

    def add(self, row: dict) -> None:
        self.writer.writerow(row)

    def flush(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()

    def counts(self) -> Counter:
        with open(self.path, newline="") as handle:
            return Counter(row["reason"] for row in csv.DictReader(handle))


def _fingerprint(data: dict, files: list[str], source: dict) -> str:
    relevant = {key: data[key] for key in ("resolution", "num_faces", "mtcnn", "align")}
    relevant["mtcnn"] = {k: v for k, v in relevant["mtcnn"].items() if k not in ("batch_size", "device", "cpu_threads")}
    digest = hashlib.sha256(
        json.dumps([relevant, source.get("image_root"), source.get("source")], sort_keys=True).encode()
    )
    digest.update("\n".join(files).encode())
    return digest.hexdigest()[:16]


def preprocess_synthetic(data: dict, source: dict, files: list[str], cache_dir: Path, report_path: Path) -> dict:
    size, root = data["resolution"], Path(source["image_root"])
    start = time.time()
    writer = CacheWriter(cache_dir, size, min(len(files), data["num_faces"]))
    rows = []
    writer.count = 0  # drawing is fast and deterministic: always rewrite from the start
    for name in tqdm(files[: writer.capacity], desc="caching faces", disable=None):
        image = Image.open(root / name).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        index = writer.add(np.asarray(image))
        rows.append(
            {
                "source_file": name,
                "status": "kept",
                "reason": "kept",
                "detail": "synthetic: drawn aligned, MTCNN not run",
                "cache_index": index,
            }
        )
    manifest = writer.work / PARTIAL_MANIFEST
    with open(manifest, "w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        out.writeheader()
        out.writerows(rows)
    writer.finish({"source": "synthetic", "synthetic": True}, manifest)
    elapsed = time.time() - start
    report = {
        "source": "synthetic",
        "device": "cpu",
        "considered": len(rows),
        "kept": len(rows),
        "rejected": {},
        "images_per_s": round(len(rows) / max(elapsed, 1e-9), 1),
        "elapsed_s": round(elapsed, 2),
        "mtcnn": False,
    }
    write_json(report_path, report)
    return report


def preprocess(
    data: dict, raw_dir: Path, cache_dir: Path, report_path: Path, device=None, stop_after: int | None = None
) -> dict:
    """Build the face cache from data/raw (see the module docstring). Returns the report.

    `stop_after` (tests, benchmarks) stops after that many source images without publishing,
    leaving the resume state as an interruption would.
    """
    source = read_json(raw_dir / "SOURCE.json")
    if source["source"] != data["source"]:
        raise UserError(
            f"{raw_dir} holds {source['source']} but data.source={data['source']}: run `dvc repro download`"
        )
    files = ordered_files(raw_dir, source)
    if not files:
        raise UserError(f"{raw_dir} lists no images: run `dvc repro download`")
    if source["source"] == "synthetic":
        return preprocess_synthetic(data, source, files, cache_dir, report_path)

    import torch

    from facegan.data.align import FaceAligner
    from facegan.device import resolve_device

    device = device or resolve_device(data["mtcnn"]["device"])
    root = Path(source["image_root"])
    if not root.is_dir():
        raise UserError(f"image folder {root} is gone: run `dvc repro download` (or fix data.folder)")
    resolution = data["resolution"]
    writer = CacheWriter(cache_dir, resolution, min(len(files), data["num_faces"]), _fingerprint(data, files, source))
    state = writer.resume_state()
    position = int(state.get("position", 0))
    elapsed_before = float(state.get("elapsed_s", 0.0))
    if position:
        log.info("resuming preprocess at image %d of %d (%d faces kept so far)", position, len(files), writer.count)
    manifest = _Manifest(writer.work / PARTIAL_MANIFEST, state.get("manifest_bytes") if position else None)
    aligner = FaceAligner(data, torch.device(device))
    batch = data["mtcnn"]["batch_size"]
    every = data["checkpoint_every"]
    start, processed, since_checkpoint = time.time(), 0, 0

    def checkpoint():
        writer.checkpoint(
            position=position, manifest_bytes=manifest.flush(), elapsed_s=elapsed_before + time.time() - start
        )

    workers = max(1, min(8, os.cpu_count() or 1))
    chunks = [files[i : i + batch] for i in range(position, len(files), batch)]
    bar = tqdm(total=len(files), initial=position, desc=f"aligning faces ({device})", unit="img", disable=None)
    with ThreadPoolExecutor(workers) as pool:

        def submit(names):  # decode a batch on the worker threads while the previous one is detected
            return [pool.submit(load_rgb, root / name) for name in names]

        pending = submit(chunks[0]) if chunks and not writer.full else []
        for number, names in enumerate(chunks):
            if writer.full:
                break
            loaded = [future.result() for future in pending]
            pending = submit(chunks[number + 1]) if number + 1 < len(chunks) else []
            good = [i for i, (image, _) in enumerate(loaded) if image is not None]
            detections, faces = aligner.process([loaded[i][0] for i in good])
            outcome = dict(zip(good, zip(detections, faces)))
            for i, name in enumerate(names):
                if writer.full:
                    break
                row = {"source_file": name, "status": "rejected"}
                if i not in outcome:
                    row.update(reason="unreadable", detail=loaded[i][1])
                else:
                    detection, face = outcome[i]
                    row.update(
                        reason=detection.reason,
                        detail=detection.detail,
                        probability="" if detection.probability is None else f"{detection.probability:.4f}",
                        box=_fmt(detection.box),
                        landmarks=_fmt(detection.landmarks, 2),
                    )
                    if face is not None:
                        row.update(status="kept", cache_index=writer.add(face))
                manifest.add(row)
                position += 1
                processed += 1
                since_checkpoint += 1
            bar.update(len(names))
            bar.set_postfix(kept=writer.count, refresh=False)
            if since_checkpoint >= every:
                checkpoint()
                since_checkpoint = 0
            if writer.full or (stop_after is not None and processed >= stop_after):
                break
    bar.close()
    checkpoint()
    elapsed = time.time() - start
    if stop_after is not None and not writer.full and position < len(files):
        manifest.close()
        return {"interrupted_at": position, "kept": writer.count}
    counts = manifest.counts()
    kept = counts.pop("kept", 0)
    report = {
        "source": source["source"],
        "device": str(device),
        "resolution": resolution,
        "num_faces_requested": data["num_faces"],
        "considered": kept + sum(counts.values()),
        "kept": kept,
        "rejected": dict(sorted(counts.items())),
        "source_images": len(files),
        "images_per_s": round(processed / max(elapsed, 1e-9), 2),
        "elapsed_s": round(elapsed, 1),
        "elapsed_total_s": round(elapsed_before + elapsed, 1),
        "resumed_from": int(state.get("position", 0)),
        "mtcnn": True,
    }
    if kept < data["num_faces"]:
        log.warning("only %d faces accepted out of %d images (data.num_faces=%d)", kept, len(files), data["num_faces"])
        report["short_of_num_faces"] = True
    manifest.close()
    meta = {
        "source": source["source"],
        "synthetic": False,
        "image_root": source["image_root"],
        "align": data["align"],
        "mtcnn": {k: v for k, v in data["mtcnn"].items() if k != "device"},
    }
    writer.finish(meta, manifest.path)  # the cache and its manifest appear together
    write_json(report_path, report)
    return report
