"""Benchmark: PGGAN grown 4x4 -> the cache's resolution (128x128 for the study) on a GPU (or CPU).

    python -m benchmarks.bench_pggan --cache data/faces            # ~8 min on one H100 (default schedule)
    torchrun --nproc_per_node=N -m benchmarks.bench_pggan --cache data/faces   # same, N GPUs
    python -m benchmarks.bench_pggan --cache <128px cache> --profile demo --phase-kimg 0 --batch-sizes '' \
        --final-kimg 2          # the demo's small PGGAN and its own schedule, grown to 128x128 (~8 min, 2-core CPU)

Runs the study's training loop (facegan/training/loop.py) with the study's PGGAN params
(params.yaml models.pggan, full width; `--profile` merges that profile's models.pggan over them)
but a shortened growing schedule (`--phase-kimg` per train and per fade-in phase, or the
profile's own with 0; `--final-kimg` at the last resolution), and writes
reports/bench/pggan_<device>.json: overall img/s, per-phase (per-resolution) seconds, img/s, batch
size and peak GPU memory, the precision used, and where the run's snapshots and grids are (one
snapshot at the end of every resolution, so FID per resolution can be computed from them).
Needs only torch, numpy, pyyaml and tqdm: dvclive is used when installed (the loop logs a warning
otherwise), and without Pillow the sample grids are written by a small zlib PNG encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import struct
import sys
import time
import types
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_pggan")


def _png_bytes(array) -> bytes:
    """An 8-bit RGB/grey PNG of a (H, W[, C]) uint8 array (filter 0 on every row)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _install_png_writer_if_no_pillow() -> bool:
    """facegan.data.cache draws grids with Pillow; on a bare GPU box stand in for the one call it
    makes (Image.fromarray(a).save(path, format="PNG")). Returns True when Pillow is missing."""
    try:
        import PIL.Image  # noqa: F401

        return False
    except ImportError:
        pass
    log.warning("Pillow is not installed: sample grids are written by the benchmark's own PNG encoder")

    class _Image:
        def __init__(self, array):
            self.array = array

        def save(self, path, format="PNG"):  # noqa: A002  (Pillow's argument name)
            Path(path).write_bytes(_png_bytes(self.array))

    image_module = types.ModuleType("PIL.Image")
    image_module.fromarray = _Image
    pil = types.ModuleType("PIL")
    pil.Image = image_module
    sys.modules["PIL"], sys.modules["PIL.Image"] = pil, image_module
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="face cache directory (faces.npy + meta.json)")
    parser.add_argument("--profile", default="study", help="take models.pggan (arch, lr, schedule) from this profile")
    parser.add_argument(
        "--phase-kimg",
        type=float,
        default=20.0,
        help="kimg of every train and fade-in phase; 0 = the profile's own growing schedule",
    )
    parser.add_argument("--final-kimg", type=float, default=40.0, help="kimg trained at the final resolution")
    parser.add_argument(
        "--batch-sizes",
        default="128,128,128,64,32,16",
        help="per level 4x4, 8x8, ...; last repeats; '' = the profile's",
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench_pggan"), help="run, checkpoints, grids")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    no_pillow = _install_png_writer_if_no_pillow()

    import numpy as np
    import torch
    import yaml

    from facegan.data.cache import FaceCache
    from facegan.handoff import ModelView
    from facegan.io import write_json
    from facegan.params import deep_merge
    from facegan.settings import ProgressiveSettings
    from facegan.training.loop import train
    from facegan.training.progressive import growing_kimg

    raw = yaml.safe_load(args.params.read_text())
    if args.profile not in raw["profiles"]:
        raise SystemExit(f"--profile {args.profile}: params.yaml has profiles {', '.join(raw['profiles'])}")
    profile = raw["profiles"][args.profile] or {}
    pggan = deep_merge(raw["models"]["pggan"], profile.get("models", {}).get("pggan", {}))
    resolution = FaceCache(args.cache).resolution
    levels = int(np.log2(resolution)) - 2
    if args.phase_kimg > 0:
        pggan["progressive"] = deep_merge(
            pggan["progressive"], {"stable_kimg": [args.phase_kimg], "fade_kimg": [args.phase_kimg]}
        )
    if args.batch_sizes:
        pggan["progressive"]["batch_sizes"] = [int(b) for b in args.batch_sizes.split(",")]
    pggan["kimg"] = growing_kimg(ProgressiveSettings.model_validate(pggan["progressive"]), levels) + args.final_kimg
    phase_kimg = pggan["progressive"]["stable_kimg"][-1]
    train_params = deep_merge(
        raw["train"],
        {
            "device": "auto",
            "precision": args.precision,
            "deterministic": False,
            "grid_size": 8,
            "checkpoint_kimg": pggan["kimg"],
            "snapshot_kimg": phase_kimg * 2,
            "sample_kimg": phase_kimg,
            "log_kimg": max(phase_kimg / 4, 0.1),
        },
    )
    cfg = ModelView.selected_run(
        model="pggan", params=pggan, train=train_params, seed=int(raw.get("seed", 0)), resolution=resolution
    )
    run_dir = args.work_dir / "run"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trained = train(cfg, args.cache, run_dir, args.work_dir / "checkpoints", live_dir=args.work_dir / "dvclive")
    wall = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) != 0:
        return
    stats = trained.to_dict()
    device_name = stats["device_name"]
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    by_resolution: dict[int, dict] = {}
    for phase in stats["schedule"]:
        timing = stats["phases"].get(phase["phase"], {})
        entry = by_resolution.setdefault(phase["resolution"], {"seconds": 0.0, "kimg": 0.0, "peak_memory_gib": 0.0})
        entry["seconds"] += timing.get("seconds", 0.0)
        entry["kimg"] += timing.get("nimg", 0) / 1000
        entry["peak_memory_gib"] = max(entry["peak_memory_gib"], (timing.get("peak_memory_bytes") or 0) / 2**30)
    for entry in by_resolution.values():
        entry["img_per_s"] = round(entry["kimg"] * 1000 / max(entry["seconds"], 1e-9), 1)
        entry["seconds"] = round(entry["seconds"], 1)
    result = {
        "benchmark": "PGGAN grown 4x4 -> final resolution with the study's training loop (facegan/training/loop.py)",
        "device": device_name,
        "world_size": stats["world_size"],
        "precision": stats["precision"],
        "resolution": resolution,
        "resolutions_reached": stats["resolutions_reached"],
        "kimg": stats["kimg"],
        "profile": args.profile,
        "progressive": pggan["progressive"],
        "lr": [pggan["lr_g"], pggan["lr_d"]],
        "arch": pggan["arch"],
        "final_kimg": args.final_kimg,
        "train_seconds": stats["train_seconds"],
        "wall_seconds_with_setup": round(wall, 1),
        "img_per_s": stats["img_per_s"],
        "peak_memory_gib": None if stats["peak_memory_bytes"] is None else round(stats["peak_memory_bytes"] / 2**30, 3),
        "per_resolution": {str(k): v for k, v in sorted(by_resolution.items())},
        "per_phase": stats["phases"],
        "params_G": stats["params_G"],
        "params_D": stats["params_D"],
        "final_losses": stats["history"][-1]["losses"],
        "dvclive": stats["dvclive"],
        "pillow": not no_pillow,
        "samples": str(run_dir / "samples"),
        "snapshots": str(run_dir / "snapshots"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"pggan_{slug}.json"
    write_json(out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("device", "img_per_s", "peak_memory_gib", "train_seconds", "resolutions_reached")},
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
