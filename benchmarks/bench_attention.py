"""StyleSwin's shifted-window attention: the masked layout against the split one, per SDPA kernel.

    python3 benchmarks/bench_attention.py [--resolution 128] [--batch 32] [--profile study]
        [--steps 10] [--warmup 3] [--rounds 2] [--device auto|cpu|cuda] [--out PATH]

`models.styleswin.arch.window_layout` picks how the shifted half of the double attention runs:
`masked` (the official cyclic shift, one attention call whose additive bias carries the shift
mask per window) or `split` (the map cut at the shifted window lines, four attention calls on
pieces that need no mask, the relative position bias alone). Both compute the same function
(tests/test_styleswin.py). This script times a StyleSwin training step (benchmarks/bench_models.py:
G and D forward/backward, Adam; bf16 on CUDA, fp32 on CPU) with each layout, alternating
--rounds times so that both see the same machine state, and on CUDA under each SDPA kernel
torch may pick for a float bias: its default choice, the memory-efficient kernel, and the math
one (flash attention takes no bias, so neither layout can use it: the relative position bias is
part of StyleSwin). A kernel that refuses the inputs records its error. Writes
reports/bench/attention_<device>.json with img/s, peak memory and split/masked ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_models import bench_model, device_slug, pick_dtype  # noqa: E402

from facegan.io import write_json  # noqa: E402
from facegan.params import load_params  # noqa: E402

LAYOUTS = ("masked", "split")


def kernel_contexts(device: torch.device) -> dict:
    """name -> context manager choosing the SDPA kernel ('default': torch's own choice)."""
    contexts = {"default": contextlib.nullcontext}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        contexts["efficient"] = lambda: sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION)
        contexts["math"] = lambda: sdpa_kernel(SDPBackend.MATH)
    return contexts


def best_of_rounds(runs: dict[str, list[dict]], device: torch.device) -> dict:
    """One kernel's row: each layout's fastest round (every round's img/s kept) and split/masked ratios."""
    row = {}
    for layout in LAYOUTS:
        ok = [r for r in runs[layout] if r["status"] == "ok"]
        best = max(ok, key=lambda r: r["img_per_s"]) if ok else runs[layout][-1]
        row[layout] = {
            "status": best["status"],
            "img_per_s_rounds": [r.get("img_per_s") for r in runs[layout]],
            **{k: best[k] for k in ("img_per_s", "peak_memory_bytes", "error") if k in best},
        }
    if all(row[layout]["status"] == "ok" for layout in LAYOUTS):
        row["split_over_masked_img_per_s"] = round(row["split"]["img_per_s"] / row["masked"]["img_per_s"], 3)
        if device.type == "cuda":  # on CPU the peak is the process's max RSS, the same for both
            row["split_over_masked_memory"] = round(
                row["split"]["peak_memory_bytes"] / row["masked"]["peak_memory_bytes"], 3
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", default="study", help="params.yaml profile the arch comes from")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="masked/split alternations; the best round counts")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default=None, help="default: reports/bench/attention_<device>.json")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is visible; use --device auto or cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    dtype = pick_dtype("auto", device)
    arch = load_params(ROOT / "params.yaml", overrides={"profile": args.profile})["models"]["styleswin"]["arch"]

    results: dict[str, dict] = {}
    for kernel, context in kernel_contexts(device).items():
        runs: dict[str, list] = {layout: [] for layout in LAYOUTS}
        for _ in range(args.rounds):
            for layout in LAYOUTS:
                try:
                    with context():
                        run = bench_model(
                            "styleswin",
                            {**arch, "window_layout": layout},
                            args.resolution,
                            args.batch,
                            args.steps,
                            args.warmup,
                            device,
                            dtype,
                        )
                except Exception as err:  # a kernel refusing the inputs, or OOM: recorded, the others go on
                    run = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                runs[layout].append(run)
                print(f"{kernel:9s} {layout:6s} {run.get('img_per_s', run.get('error'))}", flush=True)
        results[kernel] = best_of_rounds(runs, device)

    report = {
        "benchmark": "StyleSwin training step, shifted-window attention layouts (masked vs split)",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": args.resolution,
        "batch": args.batch,
        "profile": args.profile,
        "arch": arch,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "peak_memory_note": "CUDA: allocator peak during the timed steps; CPU: process max RSS (not per run)",
        "kernels": results,
    }
    out = Path(args.out) if args.out else ROOT / "reports" / "bench" / f"attention_{device_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
