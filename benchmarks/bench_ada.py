"""What ADA costs per kimg of training, as a ratio to the same training without augmentation, side by side.

    .venv/bin/python -m benchmarks.bench_ada                  # CPU, the demo profile's StyleGAN2 and StyleGAN3
    python -m benchmarks.bench_ada --device cuda --profile study --kimg 2

For each model, the real training loop (facegan.training.loop.train) runs the profile's model on synthetic
faces for --kimg (the first --warmup-kimg not timed) with `augment.mode` none and ada, alternating over
--rounds rounds so that both see the same machine state; the ADA pipe runs on every image D sees (fakes and
reals of Dmain, reals of Dreg, fakes of Gmain), also at p = 0 (the geometric resampling always runs, as the
official pipe's), so its cost does not depend on p. Writes seconds per kimg and the ratio to
reports/bench/ada_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_train import run, synthetic_cache

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--models", nargs="+", default=["stylegan2", "stylegan3"])
    parser.add_argument("--kimg", type=float, default=1.0)
    parser.add_argument("--warmup-kimg", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from facegan.params import deep_merge, load_params

    params = load_params(ROOT / "params.yaml", overrides={"profile": args.profile})
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_ada_") as tmp:
        work = Path(tmp)
        cache = synthetic_cache(params["data"]["resolution"], work)
        for model in args.models:
            timings: dict[str, list[float]] = {"none": [], "ada": []}
            for round_index in range(args.rounds):
                for mode in ("none", "ada"):
                    p = deep_merge(params, {"models": {model: {"augment": {"mode": mode}}}})
                    speed = params["train"]["speed"]
                    out = run(
                        model,
                        p,
                        speed,
                        cache,
                        work / f"{model}_{mode}_{round_index}",
                        args.device,
                        args.kimg,
                        args.warmup_kimg,
                    )
                    if "error" in out:
                        raise SystemExit(f"{model} {mode}: {out['error']}")
                    timings[mode].append(1000 / out["img_per_s"])  # seconds per kimg
                    print(f"{model} round {round_index} augment {mode}: {timings[mode][-1]:.1f} s/kimg", flush=True)
            none, ada = statistics.median(timings["none"]), statistics.median(timings["ada"])
            results[model] = {
                "seconds_per_kimg": {"none": round(none, 2), "ada": round(ada, 2)},
                "per_round": {mode: [round(t, 2) for t in values] for mode, values in timings.items()},
                "ada_cost_ratio": round(ada / none, 3),
                "batch_size": params["models"][model]["batch_size"],
            }
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = {
        "what": "seconds per kimg of training with ADA (augment.mode ada) over without (none), median of rounds",
        "device": device_name,
        "threads": torch.get_num_threads(),
        "profile": args.profile,
        "kimg": args.kimg,
        "warmup_kimg": args.warmup_kimg,
        "resolution": params["data"]["resolution"],
        "models": results,
    }
    path = ROOT / "reports" / "bench" / f"ada_{args.device}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
