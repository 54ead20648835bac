"""The whole pipeline once under `dvc repro` with the `gpu-smoke` profile, each stage timed.

    python -m benchmarks.gpu_smoke                      # on a GPU machine (benchmarks/gpu_check.sh runs it)
    python -m benchmarks.gpu_smoke --device cpu --tiny  # the same stages on CPU at toy sizes: checks the plumbing

Copies the project's code and pipeline to a scratch folder (DVC without git, so that it runs on a
machine that received a working tree without .git), selects `profile: gpu-smoke` (real MTCNN on a
folder of CelebA JPEGs, all six models a few hundred steps at 128 px, FID/KID/PR on a few thousand
samples with the labelled proxy Inception, since the 87 MB FID weights do not travel), and runs
`dvc repro --single-item` stage by stage in the pipeline's order, so that each stage's wall time is
its own and a crash names its stage. Writes reports/bench/gpu_smoke_<device>.json.
"""

from __future__ import annotations

import argparse
import graphlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("facegan", "models", "stages", "tune")
TINY = {  # --tiny: what a CPU can run in a minute or two (the GPU sizes stay in params.yaml)
    "data": {"num_faces": 48, "resolution": 32},
    "train": {"checkpoint_kimg": 0.032, "snapshot_kimg": 0.032, "sample_kimg": 0.032, "log_kimg": 0.016},
    "evaluate": {"num_gen": 24, "num_ref": 24, "snapshot_num_gen": 24, "ppl_samples": 8, "batch_size": 8},
}
TINY_MODEL = {"kimg": 0.032, "batch_size": 8}


def stage_order(project: Path, env: dict) -> list[str]:
    """Every stage in an order `dvc repro` could run them: DVC's own graph (`dvc dag --dot`, edges from
    a stage to the ones that need it), sorted topologically."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--dot"], cwd=project, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"error: dvc dag failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    needs: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        names = re.findall(r'"([^"]+)"', line)
        if len(names) == 1:
            needs.setdefault(names[0], set())
        elif len(names) == 2 and "->" in line:
            needs.setdefault(names[1], set()).add(names[0])
    return list(graphlib.TopologicalSorter(needs).static_order())


def smoke_params(device: str, tiny: bool, folder: str) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"], params["model"] = "gpu-smoke", "all"
    profile = params["profiles"]["gpu-smoke"]
    profile["data"]["folder"] = folder
    if device == "cpu":
        profile["train"]["device"] = profile["evaluate"]["device"] = profile["data"]["mtcnn"]["device"] = "cpu"
    if tiny:  # the demo profile's narrow networks, fewer images
        for section, values in TINY.items():
            profile.setdefault(section, {}).update(values)
        for name, model in profile["models"].items():
            model.update(TINY_MODEL)
            if "progressive" in model:  # 4 (or 8) to 32 px: seven 8-image phases at most
                model["kimg"] = 0.064
                model["progressive"].update(stable_kimg=[0.008], fade_kimg=[0.008], batch_sizes=[])
            model.setdefault("arch", {}).update(params["profiles"]["demo"]["models"][name].get("arch", {}))
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of this script)")
    parser.add_argument("--folder", default=str(ROOT / "benchmarks/.carry/celeba_align"), help="CelebA JPEGs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not Path(args.folder).is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder of CelebA JPEGs: run benchmarks/prepare_gpu_carry.sh")

    result: dict = {"benchmark": "every stage under dvc repro, profile gpu-smoke", "device": args.device}
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        project = Path(tmp)
        for folder in PROJECT:
            shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", ".dvcignore"):
            shutil.copy(ROOT / name, project / name)
        params = smoke_params(args.device, args.tiny, str(Path(args.folder).resolve()))
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # stages run `python`
        env = dict(
            os.environ,
            DVC_NO_ANALYTICS="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
            PATH=path,
        )
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
        stages = {}
        for stage in stage_order(project, env):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
            )
            stages[stage] = {"wall_s": round(time.perf_counter() - started, 1), "returncode": done.returncode}
            print(f"{stage}: {stages[stage]['wall_s']} s, exit {done.returncode}", flush=True)
            if done.returncode != 0:
                lines = (done.stderr + done.stdout).strip().splitlines() or ["no output"]  # ours before DVC's:
                stages[stage]["error"] = next((ln for ln in lines if ln.startswith("error:")), lines[-1])[
                    :400
                ]  # ours before DVC's
                break
        result["stages"] = stages
        result["passed"] = all(s["returncode"] == 0 for s in stages.values()) and "report" in stages
        metrics = sorted((project / "metrics").glob("*.json"))
        result["metrics"] = {m.stem: json.loads(m.read_text()) for m in metrics}
    out = args.out or ROOT / "reports" / "bench" / f"gpu_smoke_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; passed: {result['passed']}")


if __name__ == "__main__":
    main()
