"""Training-step throughput and peak memory of the study's GANs at their study sizes.

    python3 benchmarks/bench_models.py --models stylegan stylegan2 stylegan3 [--batch 32] [--steps 20]
        [--warmup 3] [--resolution 128] [--profile study] [--device auto|cpu|cuda] [--precision auto|bf16|fp16|fp32]

Each model is built from params.yaml (profile `study` unless --profile says otherwise; its `arch`
section, at --resolution) and timed over --steps training-like steps after --warmup untimed ones:
a D step (G forward without grad to D, D forward on real and fake, backward, Adam) and a G step
(G forward, D forward, backward, Adam), non-saturating loss, under autocast in bf16 on CUDA
(precision auto; fp32 on CPU). No R1 / path-length terms: this measures the networks, the
loop's lazy regularisers add roughly 1/16 and 1/4 of a step on top. Reports img/s (generated
images per G+D step pair), ms per step, peak memory (CUDA allocator peak; on CPU the process's
max RSS, which includes everything allocated before) and which custom-op path ran (Triton or the
PyTorch reference, with any fallback). A model that fails records its error instead.
Writes reports/bench/models_<device>.json (device: cpu, or the CUDA device name as a slug).
Needs only torch (+ triton on CUDA), numpy and pyyaml.
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from facegan import ops  # noqa: E402
from facegan.io import write_json  # noqa: E402
from facegan.params import load_params, model_names  # noqa: E402


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision != "fp32" and device.type != "cuda":
        sys.exit(f"error: --precision {precision} needs a CUDA GPU; use auto or fp32 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def bench_model(
    name: str,
    arch: dict,
    resolution: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    torch.manual_seed(0)
    G, D = models.build(name, arch, resolution)
    G, D = G.to(device).train(), D.to(device).train()
    spec = models.get_spec(name)
    if spec.progressive:  # time the final, most expensive stage of progressive growing
        G.set_progress(G.synthesis.max_level, 1.0), D.set_progress(D.max_level, 1.0)
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    real = torch.rand(batch, G.img_channels, resolution, resolution, device=device) * 2 - 1

    def step() -> None:
        z = torch.randn(batch, G.z_dim, device=device)
        D.requires_grad_(True), G.requires_grad_(False)
        with autocast:
            fake = G(z)
            loss_D = F.softplus(D(fake.detach()).float()).mean() + F.softplus(-D(real).float()).mean()
        opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        scaler.step(opt_D)
        D.requires_grad_(False), G.requires_grad_(True)
        with autocast:
            loss_G = F.softplus(-D(G(z)).float()).mean()
        opt_G.zero_grad(set_to_none=True)
        scaler.scale(loss_G).backward()
        scaler.step(opt_G)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "status": "ok",
        "img_per_s": round(batch * steps / seconds, 3),
        "ms_per_step": round(1000 * seconds / steps, 2),
        "peak_memory_bytes": peak_memory(device),
        "params_G": models.count_params(G),
        "params_D": models.count_params(D),
        "ops_impl": {op: ops.last_impl(op) for op in ("bias_act", "upfirdn2d", "filtered_lrelu")},
        "arch": arch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["stylegan", "stylegan2", "stylegan3"], choices=model_names())
    parser.add_argument("--batch", type=int, default=None, help="default: the model's batch_size in params")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--profile", default="study", help="params.yaml profile the arch comes from")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--out", default=None, help="default: reports/bench/models_<device>.json")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is visible; use --device auto or cpu")
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = pick_dtype(args.precision, device)
    params = load_params(ROOT / "params.yaml", overrides={"profile": args.profile})

    results = {}
    for name in args.models:
        model_params = params["models"][name]
        batch = args.batch or model_params["batch_size"]
        print(f"{name}: batch {batch}, {args.resolution}px, {dtype}, {device} ...", flush=True)
        try:
            results[name] = {
                "batch": batch,
                **bench_model(
                    name, model_params["arch"], args.resolution, batch, args.steps, args.warmup, device, dtype
                ),
            }
        except Exception as err:  # one model failing (OOM, missing kernel) must not lose the others
            results[name] = {
                "batch": batch,
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=3),
            }
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"  {results[name].get('img_per_s', results[name].get('error'))} img/s", flush=True)

    report = {
        "benchmark": "models training step (G+D forward/backward, Adam)",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": args.resolution,
        "profile": args.profile,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "ops_fallbacks": ops.fallbacks(),
        "peak_memory_note": "CUDA: allocator peak during the timed steps; CPU: process max RSS",
        "models": results,
    }
    out = Path(args.out) if args.out else ROOT / "reports" / "bench" / f"models_{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
