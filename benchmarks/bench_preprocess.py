"""Preprocess throughput (MTCNN detection + alignment + cache writes) on real CelebA images.

    .venv/bin/python -m benchmarks.bench_preprocess                 # CPU, 300 images
    python -m benchmarks.bench_preprocess --device cuda --images 3000

Runs the library's `preprocess` on the first N images (CelebA partition order) of the shared
CelebA subset, with the study params (params.yaml, profile study) except the overrides below, and
writes reports/bench/preprocess_<device>.json: images/s, kept and rejection counts, and the
projected time for all 202,599 CelebA images and for the study's 50,000 accepted faces. Needs
only torch, numpy, Pillow, pyyaml, tqdm and facenet-pytorch (installable with --no-deps).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from facegan.data.download import prepare_folder
from facegan.data.preprocess import ordered_files, preprocess
from facegan.device import resolve_device
from facegan.io import write_json
from facegan.params import load_params

CELEBA_IMAGES = 202_599
SHARED = Path("../shared/faces")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="source images to process (first N in order)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None, help="MTCNN batch (default: data.mtcnn.batch_size)")
    parser.add_argument("--resolution", type=int, default=None, help="default: data.resolution of the study")
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
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    try:
        raw = work / "raw"
        partition = args.partition if Path(args.partition).is_file() else ""
        record = prepare_folder(raw, args.folder, partition)
        listing = (raw / "files.txt").read_text().splitlines()
        first = set(ordered_files(raw, record)[: args.images])
        (raw / "files.txt").write_text("".join(line + "\n" for line in listing if line.split("\t")[0] in first))
        data.update(source="folder", raw_dir=str(raw), num_faces=len(first), checkpoint_every=10**9)
        start = time.perf_counter()
        report = preprocess(data, raw, work / "faces", work / "report.json", device=device)
        wall = time.perf_counter() - start
        if args.keep_cache:
            shutil.copytree(work / "faces", args.keep_cache, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_image = 1.0 / report["images_per_s"]  # steady state: the loop, without the one-off model load
    keep_rate = report["kept"] / report["considered"]
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
        "images": report["considered"],
        "kept": report["kept"],
        "rejected": report["rejected"],
        "keep_rate": round(keep_rate, 4),
        "images_per_s_loop": report["images_per_s"],
        "images_per_s_wall": round(report["considered"] / wall, 2),
        "wall_s": round(wall, 1),
        "projected_all_celeba_hours": round(CELEBA_IMAGES * per_image / 3600, 2),
        "projected_50k_faces_hours": round(50_000 / max(keep_rate, 1e-9) * per_image / 3600, 2),
        "note": "images_per_s_loop: the detect/align/write loop (projections use it); wall adds the MTCNN load",
    }
    out = Path(args.out or f"reports/bench/preprocess_{device.type}.json")
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
