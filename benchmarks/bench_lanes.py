"""Two trainings one after the other on all cores, or side by side on cores // 2 threads each (the demo's lanes).

    .venv/bin/python -m benchmarks.bench_lanes [--models stylegan2 r3gan] [--kimg 1.0] [--out PATH]

Runs `benchmarks.bench_train` (the real training loop, demo profile, the `levers` variant, its first
quarter kimg untimed) for each model as its own process: first one after the other with
OMP_NUM_THREADS = cpu_count, then all at once with cpu_count // len(models) threads each, on the
same machine in the same call. Writes each model's img/s both ways and the wall-clock ratio to
reports/bench/lanes_cpu.json: what `facegan.parallel_repro --jobs 2` gains on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(model: str, kimg: float, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.bench_train",
        "--models",
        model,
        "--variants",
        "levers",
        "--kimg",
        str(kimg),
        "--out",
        str(out),
    ]


def launch(model: str, kimg: float, threads: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(command(model, kimg, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def img_per_s(out: Path, model: str) -> float:
    return json.loads(out.read_text())["models"][model]["levers"]["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stylegan2", "r3gan"])
    parser.add_argument("--kimg", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "lanes_cpu.json")
    args = parser.parse_args()
    from facegan.io import write_json

    cores = os.cpu_count() or 1
    lanes = len(args.models)
    result = {
        "what": "trainings one after the other on all cores vs side by side on cores // lanes threads each",
        "cpu_count": cores,
        "kimg": args.kimg,
        "profile": "demo",
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_lanes_") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        for model in args.models:
            if launch(model, args.kimg, cores, work / f"{model}_alone.json").wait() != 0:
                raise SystemExit(f"bench_train failed for {model}")
        one_after_other = time.perf_counter() - began
        began = time.perf_counter()
        running = [launch(m, args.kimg, max(1, cores // lanes), work / f"{m}_lanes.json") for m in args.models]
        if any(p.wait() != 0 for p in running):
            raise SystemExit("bench_train failed side by side")
        side_by_side = time.perf_counter() - began
        for model in args.models:
            alone, lane = img_per_s(work / f"{model}_alone.json", model), img_per_s(work / f"{model}_lanes.json", model)
            result["models"][model] = {
                f"img_per_s_alone_{cores}_threads": alone,
                f"img_per_s_side_by_side_{max(1, cores // lanes)}_thread": lane,
                "lane_over_alone": round(lane / alone, 3),
            }
    result["wall_seconds"] = {"one_after_other": round(one_after_other, 1), "side_by_side": round(side_by_side, 1)}
    result["speedup"] = round(one_after_other / side_by_side, 3)
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
