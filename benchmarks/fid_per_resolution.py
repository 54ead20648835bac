"""FID, feature spread and precision/recall of a progressive run's snapshots, per resolution.

    python -m benchmarks.fid_per_resolution --model pggan --run /tmp/bench_pggan/run --cache data/faces
    python -m benchmarks.fid_per_resolution --run /tmp/pg128/run --cache /tmp/cache128 --profile demo --num 512

Each snapshot stores G_ema with its growing level and alpha (the loop writes one at the end of
every resolution). A snapshot at level k is judged at its own resolution: its images and the
cache's real faces are both average-pooled to 4 * 2**k and nearest-upsampled back, so the
number says how well that level matches the data at that level's detail, not how blocky a
low-resolution image looks next to a full-resolution photo. Same extractor choice as the study
(clean-fid's resize for Inception; the labelled proxy where no Inception weights are at hand).
Besides FID: the generated features' total variance over the real ones' (far below 1: collapse)
and k-NN precision/recall (k=3). Writes reports/bench/fid_per_resolution_<model>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import models
from facegan import checkpoint
from facegan.data.cache import FaceCache, to_uint8
from facegan.device import resolve_device
from facegan.io import write_json
from facegan.metrics.features import build_extractor, extract
from facegan.metrics.fid import fid_from_features
from facegan.metrics.precision_recall import knn_metrics
from facegan.params import load_params
from facegan.settings import EvaluateSettings
from facegan.training.progressive import to_resolution

BATCH = 250


def at_level(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """float NCHW images reduced to `resolution` (box filter) and nearest-upsampled back."""
    factor = images.shape[-1] // resolution
    return (
        F.interpolate(to_resolution(images, resolution), scale_factor=factor, mode="nearest") if factor > 1 else images
    )


def uint8_to_float(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pggan")
    parser.add_argument("--run", type=Path, required=True, help="run directory holding snapshots/")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--profile", default="study", help="params profile whose models.<model>.arch trained the run")
    parser.add_argument("--extractor", default="proxy", choices=["proxy", "inception", "fid_helper"])
    parser.add_argument("--weights", default="", help="Inception weights file for inception/fid_helper")
    parser.add_argument("--num", type=int, default=5000, help="generated and real images per point")
    parser.add_argument("--tag", default="", help="appended to the output file name")
    args = parser.parse_args()

    device = resolve_device("auto")
    params = load_params(overrides={"profile": args.profile})
    arch = params["models"][args.model]["arch"]
    eval_params = EvaluateSettings.model_validate(
        dict(params["evaluate"], inception_weights=args.weights, fid_helper_weights=args.weights)
    )
    cache = FaceCache(args.cache)
    extractor = build_extractor(args.extractor, eval_params, device)
    n_ref = min(args.num, len(cache))
    real_at: dict[int, np.ndarray] = {}
    points = []
    for snap in sorted((args.run / "snapshots").glob("*.pt")):
        state = checkpoint.load(snap)
        level = int(state.get("level", int(np.log2(cache.resolution)) - 2))
        resolution = 4 * 2**level
        if resolution not in real_at:
            real_at[resolution] = extract(
                (
                    to_uint8(at_level(uint8_to_float(cache.faces[i : min(i + BATCH, n_ref)]), resolution))
                    for i in range(0, n_ref, BATCH)
                ),
                extractor,
            )
        reference = real_at[resolution]
        G = models.from_snapshot(args.model, arch, cache.resolution, state).to(device)
        gen = torch.Generator().manual_seed(123)

        def batches():
            for start in range(0, args.num, BATCH):
                z = torch.randn(min(BATCH, args.num - start), G.z_dim, generator=gen).to(device)
                with torch.no_grad():
                    yield to_uint8(at_level(G(z).float().cpu(), resolution))

        feats = extract(batches(), extractor)
        pr = knn_metrics(reference, feats, k=3)
        spread = float(np.trace(np.cov(feats, rowvar=False)) / np.trace(np.cov(reference, rowvar=False)))
        points.append(
            {
                "snapshot": snap.name,
                "kimg": float(state["kimg"]),
                "level": level,
                "resolution": resolution,
                "alpha": float(state.get("alpha", 1.0)),
                "fid": fid_from_features(feats, reference),
                "feature_spread_ratio": spread,
                "precision": pr.precision,
                "recall": pr.recall,
                "num_gen": int(len(feats)),
                "num_ref": int(len(reference)),
            }
        )
        print(json.dumps(points[-1]))
    slug = re.sub(r"[^a-z0-9]+", "_", (torch.cuda.get_device_name() if device.type == "cuda" else "cpu").lower()).strip(
        "_"
    )
    write_json(
        Path("reports/bench") / f"fid_per_resolution_{args.model}_{slug}{args.tag}.json",
        {
            "model": args.model,
            "extractor": extractor.kind,
            "label": extractor.label,
            "cache": str(args.cache),
            "cache_source": cache.meta.source,
            "profile": args.profile,
            "run": str(args.run),
            "compared_at": "each snapshot's own resolution (box-pooled, nearest-upsampled, reals likewise)",
            "points": points,
        },
    )


if __name__ == "__main__":
    main()
