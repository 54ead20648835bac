"""R3GAN's training throughput beside StyleGAN2's, in one run on one machine: the ratio the study's
equal-time comparison depends on.

    .venv/bin/python -m benchmarks.bench_r3gan                       # CPU: the demo size and the study width
    python -m benchmarks.bench_r3gan --device cuda --sizes study     # a GPU: the study at 128 px

Each model trains through the real loop (facegan.training.loop.train, the params' own recipe: R3GAN's
RpGAN + R1 + R2 on every step and its augmentation; StyleGAN2's lazy R1 and path length and ADA) on
synthetic faces, first `--warmup-kimg` untimed, and the rest gives img/s. Sizes:

  demo    the demo profile as `make demo` trains it (32 px, its narrow networks and batches)
  study   the study profile's networks (R3GAN: FFHQ-256's widths, 768 channels up to 32 px; StyleGAN2:
          the 128 px row) at --study-resolution with --study-batch for both models; on CPU a small
          resolution and batch keep it to minutes, on a GPU use the study's 128 px and batch 32

Writes reports/bench/r3gan_vs_stylegan2_<device>.json: img/s of each model per size and the ratio
R3GAN / StyleGAN2.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_train import run, synthetic_cache

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("stylegan2", "r3gan")


def size_params(size: str, study_resolution: int, study_batch: int) -> dict:
    from facegan.params import deep_merge, load_params

    params = load_params(ROOT / "params.yaml", overrides={"profile": "demo" if size == "demo" else "study"})
    if size == "study":
        params["data"]["resolution"] = study_resolution
        for model in MODELS:
            params["models"][model] = deep_merge(params["models"][model], {"batch_size": study_batch})
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["demo", "study"], choices=["demo", "study"])
    parser.add_argument("--study-resolution", type=int, default=32)
    parser.add_argument("--study-batch", type=int, default=4)
    parser.add_argument("--kimg", type=float, default=None, help="per model and size (default: demo 0.4, study 0.04)")
    parser.add_argument("--warmup-kimg", type=float, default=None, help="untimed (default: a quarter of --kimg)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from facegan.io import write_json

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    out = args.out or ROOT / "reports" / "bench" / f"r3gan_vs_stylegan2_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "R3GAN vs StyleGAN2 training img/s, the real loop with each model's recipe, side by side",
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_r3gan_") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            params = size_params(size, args.study_resolution, args.study_batch)
            resolution = params["data"]["resolution"]
            kimg = args.kimg or (0.4 if size == "demo" else 0.04)
            warmup = args.warmup_kimg if args.warmup_kimg is not None else kimg / 4
            cache = synthetic_cache(resolution, work / size)
            row = {"resolution": resolution, "kimg": kimg, "warmup_kimg": warmup, "models": {}}
            for model in MODELS:
                model_params = params["models"][model]
                measured = run(
                    model, params, params["train"]["speed"], cache, work / size / model, args.device, kimg, warmup
                )
                row["models"][model] = {
                    "batch_size": model_params["batch_size"],
                    "arch": model_params["arch"],
                    **measured,
                }
                print(size, model, measured, flush=True)
            rates = [row["models"][m].get("img_per_s") for m in MODELS]
            row["r3gan_over_stylegan2"] = round(rates[1] / rates[0], 3) if all(rates) else None
            result["sizes"][size] = row
            write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
