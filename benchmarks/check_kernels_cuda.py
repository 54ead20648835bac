"""Check every Triton kernel against its PyTorch reference on a real GPU (forward and gradients).

CI runs the same comparisons under TRITON_INTERPRET=1 on CPU (tests/test_ops.py); this script is
the on-device counterpart. Writes reports/bench/kernels_check_<device>.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facegan.ops import bias_act, filtered_lrelu, setup_filter, upfirdn2d  # noqa: E402


def compare(name, fn, inputs, tol):
    results = {}
    outs = {}
    for impl in ("ref", "triton"):
        leaves = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in inputs]
        y = fn(*leaves, impl=impl)
        g = torch.randn_like(y, generator=torch.Generator(y.device).manual_seed(1))
        grads = torch.autograd.grad((y * g).sum(), [t for t in leaves if t.requires_grad])
        outs[impl] = (y.detach().float(), [gr.float() for gr in grads])
    (y_r, g_r), (y_t, g_t) = outs["ref"], outs["triton"]
    results["max_abs_err_forward"] = float((y_r - y_t).abs().max())
    results["max_abs_err_grad"] = max(float((a - b).abs().max()) for a, b in zip(g_r, g_t))
    scale = max(1.0, float(y_r.abs().max()))
    results["ok"] = results["max_abs_err_forward"] <= tol * scale and results["max_abs_err_grad"] <= tol * max(
        1.0, max(float(a.abs().max()) for a in g_r)
    )
    results["name"] = name
    return results


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU; on CPU run pytest tests/test_ops.py (TRITON_INTERPRET=1)")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    report = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        x = torch.randn(5, 19, 13, 7, device=dev, dtype=dtype)
        b = torch.randn(19, device=dev, dtype=dtype)
        report.append(
            compare(
                f"bias_act lrelu clamp {dtype}",
                lambda x, b, impl: bias_act(x, b, act="lrelu", clamp=1.5, impl=impl),
                [x, b],
                tol,
            )
        )
        f = setup_filter([1, 3, 3, 1], device=dev)
        for up, down, pad in ((2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (1, 1, [-1, 2, 0, 1]), (4, 2, [3, 3, 3, 3])):
            xi = torch.randn(3, 8, 17, 11, device=dev, dtype=dtype)
            report.append(
                compare(
                    f"upfirdn2d up{up} down{down} pad{pad} {dtype}",
                    lambda x, impl: upfirdn2d(x, f, up=up, down=down, padding=pad, impl=impl),
                    [xi],
                    tol,
                )
            )
        fu = setup_filter(torch.kaiser_window(12, periodic=False, beta=4.0), device=dev)
        fd = setup_filter(torch.kaiser_window(12, periodic=False, beta=4.0), device=dev)
        xi = torch.randn(2, 16, 24, 24, device=dev, dtype=dtype)
        bi = torch.randn(16, device=dev, dtype=dtype)
        report.append(
            compare(
                f"filtered_lrelu up2 down2 {dtype}",
                lambda x, b, impl: filtered_lrelu(
                    x, fu, fd, b, up=2, down=2, padding=10, gain=math.sqrt(2), slope=0.2, clamp=256, impl=impl
                ),
                [xi, bi],
                tol,
            )
        )
    slug = torch.cuda.get_device_name().lower().replace(" ", "-")
    out = Path("reports/bench") / f"kernels_check_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": report}, indent=2)
    )
    failed = [r["name"] for r in report if not r["ok"]]
    print(f"{len(report) - len(failed)} passed, {len(failed)} failed")
    for r in report:
        print(
            f"{'OK ' if r['ok'] else 'BAD'} {r['name']}: fwd {r['max_abs_err_forward']:.2e} "
            f"grad {r['max_abs_err_grad']:.2e}"
        )


if __name__ == "__main__":
    main()
