"""Speed and memory of the StyleGAN custom ops: Triton fast path vs PyTorch reference vs
torch.compile of the reference, forward + backward (gradients of x and b), at StyleGAN-sized shapes.

    python3 benchmarks/bench_ops.py [--quick] [--dtype float32|float16|bfloat16] [--device auto|cpu|cuda]

Writes reports/bench/ops_<device>.json (device: cpu, or the CUDA device name as a slug; a
_<dtype> suffix for half types) with the environment. On CPU only the reference and torch.compile
run (Triton needs CUDA outside its interpreter); on CUDA all three. Per variant: median ms per
forward+backward call, peak memory above the inputs (CUDA allocator; PyTorch has no CPU allocator
statistics, so null on CPU), and the bytes autograd saves for the backward (ref and triton;
torch.compile hides them).
A variant that fails records its error instead of a number.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facegan import ops  # noqa: E402
from facegan.io import write_json  # noqa: E402

# (batch, channels, resolution): StyleGAN2/3 generator and discriminator layers at 128x128 output.
FULL_SHAPES = [(32, 512, 16, 16), (32, 256, 32, 32), (32, 128, 64, 64), (32, 64, 128, 128)]
QUICK_SHAPES = [(4, 64, 16, 16), (4, 32, 32, 32)]


def _stylegan_filter(taps: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass at half the rate, like StyleGAN3's up/down filters."""
    n = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    f = torch.sinc(n / 2) * torch.kaiser_window(taps, periodic=False, beta=6.0, dtype=torch.float64)
    return ops.setup_filter(f.float(), separable=True)


def _cases(shapes):
    """(op name, shape, callable(x, b, impl), description). Shapes keep the resolution per layer."""
    f4 = ops.setup_filter([1, 3, 3, 1])
    f12 = _stylegan_filter(12)
    cases = []
    for shape in shapes:
        cases += [
            (
                "bias_act",
                shape,
                lambda x, b, impl, fn=ops.bias_act: fn(x, b, act="lrelu", clamp=256, impl=impl),
                "lrelu, gain sqrt(2), clamp 256 (every StyleGAN2 conv)",
            ),
            (
                "upsample2d",
                shape,
                lambda x, b, impl: ops.upsample2d(x, f4.to(x.device), impl=impl),
                "x2 with [1,3,3,1] (StyleGAN2 generator)",
            ),
            (
                "downsample2d",
                shape,
                lambda x, b, impl: ops.downsample2d(x, f4.to(x.device), impl=impl),
                "/2 with [1,3,3,1] (StyleGAN2 discriminator)",
            ),
            # Padding 21 in total keeps the resolution after x2 up and /2 down with 12-tap filters.
            (
                "filtered_lrelu",
                shape,
                lambda x, b, impl: ops.filtered_lrelu(
                    x,
                    f12.to(x.device),
                    f12.to(x.device),
                    b,
                    up=2,
                    down=2,
                    padding=[10, 11, 10, 11],
                    clamp=256,
                    impl=impl,
                ),
                "StyleGAN3 layer: x2, lrelu, /2, 12-tap separable filters",
            ),
        ]
    return cases


def _device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(fn, x, b) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, b)
    return total


def _measure(fn, x, b, dy, warmup, repeats, device):
    def step():
        x.grad = b.grad = None
        fn(x, b).backward(dy)

    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = None
    if device.type == "cuda":
        x.grad = b.grad = None
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return statistics.median(times), min(times), peak


def run(args) -> dict:
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = getattr(torch, args.dtype)
    impls = ["ref", "compile"] + (["triton"] if device.type == "cuda" else [])
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    warmup, repeats = (2, 5) if args.quick else (5, 20)
    results = []
    for op, shape, call, what in _cases(shapes):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(True)
        b = torch.randn(shape[1], generator=gen).to(device, dtype).requires_grad_(True)
        with torch.no_grad():
            dy = torch.randn_like(call(x, b, "ref"))
        row = {"op": op, "shape": list(shape), "what": what, "variants": {}}
        for impl in impls:
            if impl == "compile":
                torch._dynamo.reset()
                fn = torch.compile(lambda x, b: call(x, b, "ref"), dynamic=False)
            else:
                fn = lambda x, b, impl=impl: call(x, b, impl)
            try:
                median_ms, min_ms, peak = _measure(fn, x, b, dy, warmup, repeats, device)
                entry = {
                    "ms_median": round(median_ms, 4),
                    "ms_min": round(min_ms, 4),
                    "peak_mem_bytes": peak,
                    "saved_for_backward_bytes": None if impl == "compile" else _saved_bytes(fn, x, b),
                }
                if impl != "compile":
                    entry["impl_used"] = ops.last_impl("upfirdn2d" if "sample" in op else op)
            except Exception as err:  # one broken variant must not hide the others' numbers
                entry = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            row["variants"][impl] = entry
            print(f"{op:15s} {str(shape):20s} {impl:8s} {_describe(entry)}", flush=True)
        results.append(row)
    return {"environment": _environment(device, dtype, args.quick), "results": results}


def _describe(entry: dict) -> str:
    if "error" in entry:
        return entry["error"]
    text = f"{entry['ms_median']:9.3f} ms"
    if entry["peak_mem_bytes"] is not None:
        text += f"  peak {entry['peak_mem_bytes'] / 2**20:8.1f} MiB"
    if entry["saved_for_backward_bytes"] is not None:
        text += f"  saved {entry['saved_for_backward_bytes'] / 2**20:8.1f} MiB"
    return text


def _environment(device, dtype, quick) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "quick": quick,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "timing": "median/min wall ms per forward+backward call after warm-up (compile time excluded)",
        "fallbacks": ops.fallbacks(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="default reports/bench/ops_<device>.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device auto or cpu")
    report = run(args)
    device = torch.device(report["environment"]["device_type"])
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    out = args.out or Path("reports/bench") / f"ops_{_device_slug(device)}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
