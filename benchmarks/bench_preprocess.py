"""Preprocess throughput (MTCNN detection + alignment + cache writes) on real CelebA images.

    .venv/bin/python -m benchmarks.bench_preprocess                 # CPU, 300 images, the parallel path
    .venv/bin/python -m benchmarks.bench_preprocess --compare-today # also the sequential path, side by side
    python -m benchmarks.bench_preprocess --device cuda --images 3000

Runs the library's `preprocess` on the first N images (CelebA partition order) of the shared
CelebA subset, with the study params (params.yaml, profile study) except the overrides below, and
writes reports/bench/preprocess_<device>.json: images/s (the loop, and end to end with the model
load and worker start), MTCNN's own images/s, kept and rejection counts, and the projected time
for all 202,599 CelebA images and for the study's 50,000 accepted faces.

--compare-today also runs the sequential reference path (`workers=0`: MTCNN on one thread, one
warp per image, as preprocess ran before the worker processes) on the same images in the same
run, and records its numbers under "today", the speed-up, and whether both paths kept the same
faces in the same order (manifest rows) and how far their crops differ. Needs only torch, numpy,
Pillow, pyyaml, tqdm and facenet-pytorch (installable with --no-deps).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facegan.data.cache import FaceCache
from facegan.data.download import prepare_folder, write_file_list
from facegan.data.preprocess import default_workers, ordered_files, preprocess
from facegan.device import resolve_device
from facegan.io import write_json
from facegan.params import load_params
from facegan.settings import DataSettings

CELEBA_IMAGES = 202_599
SHARED = Path("../shared/faces")


def run_path(data: dict, raw: Path, out: Path, device: torch.device, workers: int) -> dict:
    """One preprocess run into `out`; its numbers, rates computed from the report."""
    start = time.perf_counter()
    report = preprocess(
        DataSettings.model_validate(data), raw, out / "faces", out / "report.json", device=device, workers=workers
    )
    wall = time.perf_counter() - start
    per_image = 1.0 / report["images_per_s"]  # steady state: the loop, without the one-off model load
    keep_rate = report["kept"] / report["considered"]
    # MTCNN runs side by side in every CPU worker; next to a GPU (or sequentially) in one process
    detectors = max(1, workers) if device.type == "cpu" else 1
    per_process = report["detected"] / max(report["busy_s"]["detect"], 1e-9)
    return {
        "workers": workers,
        "images": report["considered"],
        "kept": report["kept"],
        "rejected": report["rejected"],
        "keep_rate": round(keep_rate, 4),
        "images_per_s_loop": report["images_per_s"],
        "images_per_s_wall": round(report["considered"] / wall, 2),
        "end_to_end_images_per_s": round(report["considered"] / wall, 2),
        "mtcnn_images_per_s": round(per_process * detectors, 2),
        "mtcnn_images_per_s_per_process": round(per_process, 2),
        "busy_s": report["busy_s"],
        "wall_s": round(wall, 1),
        "projected_all_celeba_hours": round(CELEBA_IMAGES * per_image / 3600, 2),
        "projected_50k_faces_hours": round(50_000 / max(keep_rate, 1e-9) * per_image / 3600, 2),
    }


def manifest_rows(cache_dir: Path) -> list[dict]:
    with open(cache_dir / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def agreement(today: Path, new: Path) -> dict:
    """Whether both paths kept the same faces in the same order, and how far their crops differ."""
    same_rows = manifest_rows(today) == manifest_rows(new)
    a, b = FaceCache(today).faces, FaceCache(new).faces
    mad = float(np.abs(a.astype(np.int16) - b).mean()) if a.shape == b.shape else None
    return {"same_manifest_rows": same_rows, "crop_mean_abs_diff_levels": mad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="source images to process (first N in order)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="MTCNN batch (default: data.mtcnn.batch_size)")
    parser.add_argument("--resolution", type=int, default=None, help="default: data.resolution of the study")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one a core; 0: sequential)")
    parser.add_argument("--compare-today", action="store_true", help="also run the sequential path (workers=0)")
    parser.add_argument("--folder", default=str(SHARED / "celeba_align"))
    parser.add_argument("--partition", default=str(SHARED / "list_eval_partition.txt"))
    parser.add_argument("--out", default=None, help="default: reports/bench/preprocess_<device>.json")
    parser.add_argument(
        "--keep-cache", default=None, help="copy the face cache written here (e.g. for a training benchmark)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    device = resolve_device(args.device)
    data = load_params(overrides={"profile": "study"})["data"]
    if args.batch_size:
        data["mtcnn"]["batch_size"] = args.batch_size
    if args.resolution:
        data["resolution"] = args.resolution
    workers = default_workers(device, data["mtcnn"]["cpu_threads"]) if args.workers is None else args.workers
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        raw = work / "raw"
        partition = args.partition if Path(args.partition).is_file() else ""
        record = prepare_folder(raw, args.folder, partition)
        first = ordered_files(raw, record)[: args.images]
        write_file_list(raw, Path(record.image_root), first)
        data.update(source="folder", raw_dir=str(raw), num_faces=len(first), checkpoint_every=10**9)
        # facenet-pytorch's import (with torchvision, ~4 s on 2 cores) once before either run: the
        # first run would otherwise pay it alone and look slower end to end than it is
        import facenet_pytorch  # noqa: F401

        today = run_path(data, raw, work / "today", device, 0) if args.compare_today else None
        new = run_path(data, raw, work / "new", device, workers)
        compared = agreement(work / "today" / "faces", work / "new" / "faces") if today else None
        if args.keep_cache:
            shutil.copytree(work / "new" / "faces", args.keep_cache, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mtcnn_cpu_threads": data["mtcnn"]["cpu_threads"],
        "batch_size": data["mtcnn"]["batch_size"],
        "resolution": data["resolution"],
        **new,
        "note": "images_per_s_loop: the detect/align/write loop (projections use it); wall (= end_to_end) adds "
        "the MTCNN load and the worker start; mtcnn_images_per_s: images detected per second of MTCNN time, "
        "times the processes running it side by side; busy_s: seconds per step added over the workers",
    }
    if today:
        result["today"] = today
        result["speedup_vs_today"] = {
            key: round(new[key] / today[key], 2)
            for key in ("images_per_s_loop", "end_to_end_images_per_s", "mtcnn_images_per_s")
        }
        result.update(compared)
    out = Path(args.out or f"reports/bench/preprocess_{device.type}.json")
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
