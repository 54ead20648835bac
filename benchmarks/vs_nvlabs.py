"""Training throughput side by side with NVlabs' official stylegan3 `train.py`, on the same GPU, in one run.

    python -m benchmarks.vs_nvlabs --nvlabs /path/to/stylegan3 [--warmup-kimg 2 --kimg 6]
    python -m benchmarks.vs_nvlabs --skip-nvlabs --device cpu --kimg 0.064 --warmup-kimg 0.032   # ours only

NVlabs' code is read from the local copy given by --nvlabs (never committed or vendored here). Both
implementations train on the same synthetic 128x128 faces (facegan.data.synthetic; a PNG zip for
NVlabs, the face cache for ours), one after the other, with NVlabs' own 128 px rows:

  stylegan2    --cfg=stylegan2 --batch=32 --gamma=0.1024 --map-depth=2 --glr=0.0025 --dlr=0.0025 --cbase=16384
  stylegan3-t  --cfg=stylegan3-t --batch=32 --gamma=0.5, once with --batch-gpu=16 (NVlabs' 7.2 GB row: two
               accumulated rounds of 16) against ours at batch 16 (the same per-GPU batch), and once in one
               round of 32 against ours at 32

both with --aug=noaug (the study's loop has no ADA) and --metrics=none. Throughput is images per second
over the kimg after the warm-up; peak memory is the largest CUDA allocation of those ticks (NVlabs:
Resources/peak_gpu_mem_gb of its stats.jsonl; ours: the history's peak_memory_gib). NVlabs' log is
checked for its custom CUDA plugins: when one printed "Failed!" it ran its slow reference ops and the
row says so. Writes reports/bench/vs_nvlabs_<device>.json with both rows and the ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 128
ROWS = {  # name: (NVlabs flags, our model, our batch)
    "stylegan2": (
        [
            "--cfg=stylegan2",
            "--batch=32",
            "--gamma=0.1024",
            "--map-depth=2",
            "--glr=0.0025",
            "--dlr=0.0025",
            "--cbase=16384",
        ],
        "stylegan2",
        32,
    ),
    "stylegan3-t_batch-gpu-16": (["--cfg=stylegan3-t", "--batch=32", "--gamma=0.5", "--batch-gpu=16"], "stylegan3", 16),
    "stylegan3-t_batch-32": (["--cfg=stylegan3-t", "--batch=32", "--gamma=0.5", "--batch-gpu=32"], "stylegan3", 32),
}


def make_data(work: Path, count: int) -> tuple[Path, Path]:
    """The same synthetic faces twice: a PNG zip NVlabs' ImageFolderDataset reads, and our face cache."""
    from PIL import Image

    from facegan.data.cache import CacheWriter
    from facegan.data.synthetic import render_face

    zip_path, writer = work / "faces128.zip", CacheWriter(work / "faces", RESOLUTION, count)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            face = render_face(0, i, RESOLUTION)
            buffer = BytesIO()
            Image.fromarray(face).save(buffer, format="PNG")
            zf.writestr(f"{i:06d}.png", buffer.getvalue())
            writer.add(face)
    return zip_path, writer.finish(source="synthetic", synthetic=True)


def run_nvlabs(nvlabs: Path, flags: list[str], data: Path, work: Path, kimg: float, warmup: float) -> dict:
    outdir = work / "nvlabs_runs"
    command = [
        sys.executable,
        "train.py",
        f"--outdir={outdir}",
        f"--data={data}",
        "--gpus=1",
        "--aug=noaug",
        "--metrics=none",
        f"--kimg={max(1, round(kimg))}",
        "--tick=1",
        "--snap=1000",
        *flags,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=nvlabs, capture_output=True, text=True)
    log = done.stdout + done.stderr
    plugins = dict(re.findall(r'Setting up PyTorch plugin "(\w+)"\.\.\. (Done|Failed)', log))
    row = {
        "command": " ".join(command),
        "returncode": done.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "plugins": plugins,
        "plugins_compiled": bool(plugins) and all(v == "Done" for v in plugins.values()),
    }
    if done.returncode != 0:
        row["error"] = log.strip().splitlines()[-1][:300] if log.strip() else "no output"
        return row
    (stats_file,) = sorted(outdir.glob("*/stats.jsonl"))[-1:]
    ticks = [json.loads(line) for line in stats_file.read_text().splitlines()]
    measured = [t for t in ticks if t["Progress/kimg"]["mean"] > warmup]
    sec_per_kimg = sum(t["Timing/sec_per_kimg"]["mean"] for t in measured) / max(len(measured), 1)
    row.update(
        img_per_s=round(1000 / sec_per_kimg, 1) if measured else None,
        ticks_measured=len(measured),
        peak_memory_gib=max((t["Resources/peak_gpu_mem_gb"]["mean"] for t in measured), default=None),
    )
    return row


def run_ours(model: str, batch: int, cache: Path, work: Path, kimg: float, warmup: float, device: str) -> dict:
    """Our loop in a fresh process (its own CUDA context and peak-memory counter), study params at NVlabs' row."""
    script = f"""
import json, sys
from pathlib import Path
from facegan.params import deep_merge, load_params
from facegan.handoff import ModelView
from facegan.training.loop import train
p = load_params({str(ROOT / "params.yaml")!r}, overrides={{"profile": "study"}})
model_params = deep_merge(p["models"][{model!r}], {{"kimg": {kimg}, "batch_size": {batch}}})
if {model!r} == "stylegan2":  # NVlabs' 128 px row
    model_params = deep_merge(model_params, {{"lr_g": 0.0025, "lr_d": 0.0025, "loss": {{"r1_gamma": 0.1024}},
                         "arch": {{"mapping_layers": 2, "channel_base": 16384}}}})
train_params = deep_merge(p["train"], {{"device": {device!r}, "checkpoint_kimg": 1e6, "snapshot_kimg": 1e6,
                              "sample_kimg": 1e6, "log_kimg": {max(kimg / 20, 0.016)}}})
view = ModelView.selected_run({model!r}, model_params, train_params, 0, {RESOLUTION})
stats = train(view, Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
print("STATS " + json.dumps(stats.to_dict()))
"""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, str(cache), str(work / f"ours_{model}_{batch}"), str(work / "ours_ckpt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    row = {
        "model": model,
        "batch": batch,
        "returncode": done.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    lines = [line for line in done.stdout.splitlines() if line.startswith("STATS ")]
    if done.returncode != 0 or not lines:
        row["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return row
    stats = json.loads(lines[-1][6:])
    rows = stats["history"]
    measured = [(cur["kimg"] - prev["kimg"], cur) for prev, cur in zip(rows, rows[1:]) if prev["kimg"] >= warmup]
    images = sum(kimg for kimg, _ in measured) * 1000
    seconds = sum(kimg * 1000 / row["img_per_s"] for kimg, row in measured)
    peaks = [row["peak_memory_gib"] for _, row in measured if row["peak_memory_gib"] is not None]
    row.update(
        img_per_s=round(images / seconds, 1) if seconds else None,
        precision=stats["precision"],
        peak_memory_gib=max(peaks) if peaks else None,
        phases=stats["training_phases"],
        kernel_fallbacks=stats["kernel_fallbacks"],
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvlabs", type=Path, help="a local copy of github.com/NVlabs/stylegan3")
    parser.add_argument("--skip-nvlabs", action="store_true", help="ours only (a CPU check of this script)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--kimg", type=float, default=6.0, help="images per run, warm-up included (kimg)")
    parser.add_argument("--warmup-kimg", type=float, default=2.0)
    parser.add_argument("--images", type=int, default=2048, help="synthetic faces in the dataset")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=None, help="our batch instead of the row's (a CPU check)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.skip_nvlabs and (args.nvlabs is None or not (args.nvlabs / "train.py").exists()):
        raise SystemExit(
            "error: --nvlabs must name a local copy of NVlabs/stylegan3 (with train.py), or pass --skip-nvlabs"
        )

    import torch

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result = {
        "benchmark": "training img/s and peak memory, ours vs NVlabs stylegan3 train.py, same GPU, one run",
        "device": device_name,
        "torch": torch.__version__,
        "resolution": RESOLUTION,
        "kimg": args.kimg,
        "warmup_kimg": args.warmup_kimg,
        "rows": {},
    }
    with tempfile.TemporaryDirectory(prefix="vs_nvlabs_") as tmp:
        work = Path(tmp)
        zip_path, cache = make_data(work, args.images)
        for name in args.rows:
            flags, model, batch = ROWS[name]
            batch = args.batch or batch
            row = {"ours": run_ours(model, batch, cache, work, args.kimg, args.warmup_kimg, args.device)}
            if not args.skip_nvlabs:
                row["nvlabs"] = run_nvlabs(args.nvlabs, flags, zip_path, work, args.kimg, args.warmup_kimg)
                ours, theirs = row["ours"].get("img_per_s"), row["nvlabs"].get("img_per_s")
                if ours and theirs:
                    row["speed_ratio_ours_over_nvlabs"] = round(ours / theirs, 2)
                mem_o, mem_t = row["ours"].get("peak_memory_gib"), row["nvlabs"].get("peak_memory_gib")
                if mem_o and mem_t:
                    row["memory_ratio_ours_over_nvlabs"] = round(mem_o / mem_t, 2)
                if not row["nvlabs"].get("plugins_compiled"):
                    row["label"] = "NVlabs ran without its compiled CUDA plugins (reference ops): not a fair baseline"
            result["rows"][name] = row
            print(name, json.dumps(row), flush=True)
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    out = args.out or ROOT / "reports" / "bench" / f"vs_nvlabs_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
