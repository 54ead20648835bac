"""Training throughput of the study's loop, with each speed lever of `train.speed` off and on, in one run.

    .venv/bin/python -m benchmarks.bench_train                      # CPU, the demo profile
    python -m benchmarks.bench_train --device cuda --profile study --models stylegan2 stylegan3 styleswin pggan

For every model, the real training loop (facegan.training.loop.train) runs the profile's model on
synthetic faces for --kimg (the first --warmup-kimg not timed), once per variant:

  baseline      every lever off: a host sync per step for the finiteness check, per-tensor EMA, faces
                copied from host memory each step, plain Adam, NCHW (the loop as it was)
  levers        the params.yaml defaults of train.speed (check_every 16, foreach EMA, faces on the GPU,
                fused Adam on CUDA)
  +channels_last, +compile, +cudagraphs   the defaults plus one more lever each (cudagraphs: torch.compile
                in reduce-overhead mode, replayed as CUDA graphs; CUDA only)

and writes images/s, peak memory and the ratio to the baseline to reports/bench/train_<device>.json.
The CPU figures say whether the CPU demo got slower; the GPU ones which lever helped where.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "baseline": {
        "cache_on_device": "off",
        "check_every": 1,
        "fused_adam": False,
        "foreach_ema": False,
        "channels_last": False,
        "compile": "none",
    },
    "levers": {},
    "levers+channels_last": {"channels_last": True},
    "levers+compile": {"compile": "default"},
    "levers+cudagraphs": {"compile": "cudagraphs"},  # CUDA only: torch.compile's reduce-overhead mode
}


def synthetic_cache(resolution: int, work: Path, count: int = 1024) -> Path:
    """A face cache of `count` synthetic faces under `work`."""
    from facegan.data.cache import CacheWriter
    from facegan.data.synthetic import render_face

    writer = CacheWriter(work / "faces", resolution, count)
    for i in range(count):
        writer.add(render_face(0, i, resolution))
    return writer.finish(source="synthetic", synthetic=True)


def run(
    model: str, params: dict, variant: dict, cache: Path, work: Path, device: str, kimg: float, warmup: float
) -> dict:
    from facegan.handoff import ModelView
    from facegan.params import deep_merge
    from facegan.training.loop import train

    model_params = deep_merge(params["models"][model], {"kimg": kimg})
    if "progressive" in model_params:  # time the final level: no growing
        model_params = deep_merge(model_params, {"progressive": {"initial_resolution": params["data"]["resolution"]}})
    train_params = deep_merge(
        params["train"],
        {
            "device": device,
            "checkpoint_kimg": 1e6,
            "snapshot_kimg": 1e6,
            "sample_kimg": 1e6,
            "log_kimg": kimg / 10,
            "speed": variant,
        },
    )
    started = time.perf_counter()
    try:
        stats = train(
            ModelView.selected_run(model, model_params, train_params, 0, params["data"]["resolution"]),
            cache,
            work / "run",
            work / "ckpt",
        )
    except Exception as err:  # noqa: BLE001 - a lever that fails is a result too
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    rows = [r.to_dict() for r in stats.history]
    measured = [(cur["kimg"] - prev["kimg"], cur) for prev, cur in zip(rows, rows[1:]) if prev["kimg"] >= warmup]
    seconds = sum(k * 1000 / r["img_per_s"] for k, r in measured)
    peaks = [r["peak_memory_gib"] for _, r in measured if r["peak_memory_gib"] is not None]
    return {
        "img_per_s": round(sum(k for k, _ in measured) * 1000 / seconds, 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_memory_gib": max(peaks) if peaks else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--profile", default="demo")
    parser.add_argument(
        "--models", nargs="+", default=["dcgan", "pggan", "stylegan", "stylegan2", "stylegan3", "styleswin"]
    )
    parser.add_argument(
        "--variants", nargs="+", default=["baseline", "levers", "levers+channels_last"], choices=list(VARIANTS)
    )
    parser.add_argument("--kimg", type=float, default=1.0)
    parser.add_argument("--warmup-kimg", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from facegan.io import write_json
    from facegan.params import deep_merge, load_params

    params = load_params(ROOT / "params.yaml", overrides={"profile": args.profile})
    resolution = params["data"]["resolution"]
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result = {
        "benchmark": "training loop img/s per speed lever",
        "device": device_name,
        "profile": args.profile,
        "resolution": resolution,
        "kimg": args.kimg,
        "warmup_kimg": args.warmup_kimg,
        "torch_threads": torch.get_num_threads(),
        "variants": {
            v: {**VARIANTS["baseline"], **VARIANTS[v]}
            if v == "baseline"
            else deep_merge(params["train"]["speed"], VARIANTS[v])
            for v in args.variants
        },
        "models": {},
    }
    slug = re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")
    out = args.out or ROOT / "reports" / "bench" / f"train_{slug}_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        cache = synthetic_cache(resolution, work)
        for model in args.models:
            rows = {}
            for name in args.variants:
                variant = result["variants"][name]
                rows[name] = run(
                    model, params, variant, cache, work / f"{model}_{name}", args.device, args.kimg, args.warmup_kimg
                )
                base, now = rows.get("baseline", {}).get("img_per_s"), rows[name].get("img_per_s")
                if base and now:
                    rows[name]["speedup_over_baseline"] = round(now / base, 3)
                print(model, name, json.dumps(rows[name]), flush=True)
            result["models"][model] = rows
            write_json(out, result)  # after every model: a run cut short by a time cap keeps what it measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
