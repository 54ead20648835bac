"""Custom ops of the StyleGAN family: bias_act, upfirdn2d (+ up/down/filter helpers), filtered_lrelu.

README. Each op has two paths with the same signature and semantics (those of NVlabs'
stylegan2-ada-pytorch / stylegan3 ops, re-implemented here):
  - fast path `<op>_triton`: Triton kernels (`_triton_kernels.py`) wrapped in autograd Functions
    with hand-written backwards that are themselves differentiable (R1 / path-length penalties);
    runs on CUDA, and on CPU only under TRITON_INTERPRET=1 (how CI tests it);
  - reference path `<op>_ref`: plain PyTorch ops, PyTorch autograd; the ground truth the tests
    compare the fast path with.
The public `<op>(..., impl='auto')` takes the fast path on CUDA tensors when triton imports and the
reference otherwise; impl='ref' / impl='triton' force one. `last_impl(op)` tells which path the
op's latest call took; if a Triton kernel fails under 'auto' the op logs one warning, uses the
reference from then on and lists the failure in `fallbacks()`. Speed and memory of the three
options (triton, reference, torch.compile of the reference): benchmarks/bench_ops.py.
"""

from facegan.ops._dispatch import fallbacks, last_impl
from facegan.ops.bias_act import ACTIVATIONS, bias_act, bias_act_ref, bias_act_triton
from facegan.ops.filtered_lrelu import filtered_lrelu, filtered_lrelu_ref, filtered_lrelu_triton
from facegan.ops.upfirdn2d import (
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upfirdn2d_ref,
    upfirdn2d_triton,
    upsample2d,
)

__all__ = [
    "ACTIVATIONS",
    "bias_act",
    "bias_act_ref",
    "bias_act_triton",
    "upfirdn2d",
    "upfirdn2d_ref",
    "upfirdn2d_triton",
    "setup_filter",
    "upsample2d",
    "downsample2d",
    "filter2d",
    "filtered_lrelu",
    "filtered_lrelu_ref",
    "filtered_lrelu_triton",
    "last_impl",
    "fallbacks",
]
