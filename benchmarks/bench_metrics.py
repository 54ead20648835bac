"""What each metric of the evaluation costs per 1,000 images, side by side in one run on one machine.

    .venv/bin/python -m benchmarks.bench_metrics                          # CPU
    python -m benchmarks.bench_metrics --device cuda --images 10000       # a GPU (benchmarks/gpu_check.sh)

Times, on --images random uint8 faces at 128 px (feature networks with random weights: only throughput is
measured, and it does not depend on the weights):
  inception      the FID Inception's architecture (torchvision Inception-v3 at 299 px, clean-fid's resize)
  dinov2_vitl14  FD-DINOv2's ViT-L/14 at 224 px (dgm-eval's protocol), and the demo's stand-ins
  fid_infinity   FID at 15 sample counts plus the 1/n fit, from features already extracted (no new images)
  knn_metrics    precision, recall, density and coverage in one batched pass (Inception-sized features)
and writes reports/bench/metrics_<device>.json with seconds per 1,000 images and every ratio to the
Inception pass. The issue's bar: FD-DINOv2 must not add more than the Inception pass costs (ratio <= 1 on a
GPU); FID-infinity extracts nothing.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up: first-call allocations, cuDNN autotuning
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=64, help="images per feature pass")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--features", type=int, default=2000, help="feature vectors for FID-infinity and k-NN")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torchvision

    from facegan.io import write_json
    from facegan.metrics import dinov2
    from facegan.metrics.features import Extractor, extract, resize_for_inception
    from facegan.metrics.fid import extrapolate_fid, sample_sizes
    from facegan.metrics.precision_recall import knn_metrics

    device = torch.device(args.device)
    images = (np.random.default_rng(0).random((args.images, 128, 128, 3)) * 255).astype(np.uint8)
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]

    inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    inception.fc = torch.nn.Identity()
    inception = inception.eval().to(device)
    networks = {
        "inception": Extractor("inception", lambda x: inception(x.to(device) / 128 - 1), device, resize_for_inception),
    }
    for arch, size in (
        ("vit_large_patch14_dinov2", 224),
        ("vit_small_patch14_dinov2", 224),
        ("vit_small_patch14_dinov2", 112),
    ):
        net = dinov2.vit(arch, size).eval().to(device)
        networks[f"{arch}@{size}"] = Extractor(
            "dinov2",
            lambda x, net=net: net(x.to(device)),
            device,
            lambda b, size=size: dinov2.resize_for_dinov2(b, size),
        )
    per_1000 = {}
    with torch.no_grad():
        for name, extractor in networks.items():
            seconds = timed(lambda extractor=extractor: extract(batches, extractor))
            per_1000[name] = round(seconds / args.images * 1000, 3)
            print(name, per_1000[name], "s per 1000 images", flush=True)
    rng = np.random.default_rng(1)
    reference, fake = rng.normal(size=(args.features, 2048)), rng.normal(size=(args.features, 2048))
    sizes = sample_sizes(args.features, 15, 0.1)
    fid_inf_s = timed(lambda: extrapolate_fid(fake, reference, sizes, seed=0))
    knn_s = timed(lambda: knn_metrics(reference, fake, k=3, device=device))
    inception_1000 = per_1000["inception"]
    result = {
        "benchmark": "evaluation cost per 1,000 images: feature networks (random weights), FID-infinity, k-NN metrics",
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "feature_vectors": args.features,
        "seconds_per_1000_images": per_1000,
        "ratio_to_inception": {name: round(s / inception_1000, 3) for name, s in per_1000.items()},
        "fid_infinity": {
            "sizes": sizes,
            "seconds": round(fid_inf_s, 3),
            "seconds_per_1000_images": round(fid_inf_s / args.features * 1000, 3),
            "extracts_images": False,
        },
        "knn_metrics": {
            "seconds": round(knn_s, 3),
            "seconds_per_1000_images": round(knn_s / args.features * 1000, 3),
            "note": "precision, recall, density, coverage in one pass; grows as n^2",
        },
    }
    slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
    out = args.out or ROOT / "reports" / "bench" / f"metrics_{slug}.json"
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
