"""FID of a progressive run's snapshots, one point per resolution reached (PGGAN, StyleGAN).

    python -m benchmarks.fid_per_resolution --model pggan --run /tmp/bench_pggan/run --cache data/faces

Each snapshot stores G_ema with its growing level and alpha; its images (at the snapshot's own
resolution) go through the same extractor as the study (clean-fid's resize for Inception; the
labelled proxy where no Inception weights are available) against the cache's real faces.
Writes reports/bench/fid_per_resolution_<model>_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
import yaml

import models
from facegan.data.cache import FaceCache, to_uint8
from facegan.device import resolve_device
from facegan.io import write_json
from facegan.metrics.features import build_extractor, extract
from facegan.metrics.fid import fid_from_features
from facegan.training import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pggan")
    parser.add_argument("--run", type=Path, required=True, help="run directory holding snapshots/")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--extractor", default="proxy", choices=["proxy", "inception", "fid_helper"])
    parser.add_argument("--weights", default="", help="Inception weights file for inception/fid_helper")
    parser.add_argument("--num", type=int, default=5000, help="generated and real images per point")
    args = parser.parse_args()

    device = resolve_device("auto")
    arch = yaml.safe_load(Path("params.yaml").read_text())["models"][args.model]["arch"]
    cache = FaceCache(args.cache)
    extractor = build_extractor(args.extractor, args.weights, device)
    n_ref = min(args.num, len(cache))
    reference = extract((np.asarray(cache.faces[i:i + 250]) for i in range(0, n_ref, 250)), extractor)
    points = []
    for snap in sorted((args.run / "snapshots").glob("*.pt")):
        state = checkpoint.load(snap)
        G = models.from_snapshot(args.model, arch, cache.resolution, state).to(device)
        gen = torch.Generator().manual_seed(123)

        def batches():
            for start in range(0, args.num, 250):
                z = torch.randn(min(250, args.num - start), G.z_dim, generator=gen).to(device)
                with torch.no_grad():
                    yield to_uint8(G(z))

        feats = extract(batches(), extractor)
        with torch.no_grad():
            side = G(torch.zeros(1, G.z_dim, device=device)).shape[-1]
        points.append({"snapshot": snap.name, "kimg": float(state["kimg"]), "level": int(state.get("level", -1)),
                       "alpha": float(state.get("alpha", 1.0)), "output_resolution": int(side),
                       "fid": fid_from_features(feats, reference), "num_gen": int(len(feats)), "num_ref": int(len(reference))})
        print(json.dumps(points[-1]))
    slug = re.sub(r"[^a-z0-9]+", "_", (torch.cuda.get_device_name() if device.type == "cuda" else "cpu").lower()).strip("_")
    write_json(Path("reports/bench") / f"fid_per_resolution_{args.model}_{slug}.json",
               {"model": args.model, "extractor": extractor.kind, "label": extractor.label, "cache": str(args.cache),
                "cache_source": cache.meta.get("source"), "points": points})


if __name__ == "__main__":
    main()
