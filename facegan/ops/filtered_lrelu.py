"""StyleGAN3's alias-free activation (Karras et al. 2021, "Alias-Free Generative Adversarial
Networks", sec. 3.2): add bias, upsample with the low-pass fu, leaky ReLU times gain and clamp at
the higher rate, low-pass with fd and downsample. Semantics match StyleGAN3's `filtered_lrelu`:
padding applies to the upsampling step, whose gain is up**2 to make up for the inserted zeros.

Fast path: the upfirdn2d Triton kernel with the bias fused into the first up-pass and the leaky
ReLU/gain/clamp fused into the last up-pass, which also writes one int8 code per pixel (positive,
negative, clamped) so the backward needs neither the pre-activation nor the upsampled tensor;
then the down-pass(es). Backward: adjoint FIR passes around a multiply by the saved slopes, built
from differentiable pieces, so second-order gradients work. Reference: bias_act_ref +
upfirdn2d_ref composed with PyTorch autograd.
"""

from __future__ import annotations

import math

import torch

from facegan.errors import UserError
from facegan.ops import _dispatch
from facegan.ops.bias_act import bias_act_ref
from facegan.ops.upfirdn2d import _check as check_upfirdn2d
from facegan.ops.upfirdn2d import _filter_size, correlation_weight, fir_adjoint, upfirdn2d_ref

OP = "filtered_lrelu"


def _check(x, fu, fd, b, up, down, padding, clamp):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"filtered_lrelu: x must be an NCHW tensor, got shape {getattr(x, 'shape', None)}")
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise UserError(f"filtered_lrelu: up={up!r} and down={down!r} must be positive ints")
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[1]):
        raise UserError(f"filtered_lrelu: b has shape {tuple(b.shape)}, expected ({x.shape[1]},)")
    if clamp is not None and clamp < 0:
        raise UserError(f"filtered_lrelu: clamp={clamp} must be None or >= 0")
    for name, f in (("fu", fu), ("fd", fd)):
        if f is not None and f.ndim not in (1, 2):
            raise UserError(f"filtered_lrelu: {name} must be a 1-D or 2-D filter, got shape {tuple(f.shape)}")


def filtered_lrelu_ref(
    x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None, flip_filter=False
):
    """Reference path: bias_act_ref and upfirdn2d_ref composed, PyTorch autograd."""
    _check(x, fu, fd, b, up, down, padding, clamp)
    x = bias_act_ref(x, b)
    x = upfirdn2d_ref(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up**2)
    x = bias_act_ref(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn2d_ref(x, fd, down=down, flip_filter=flip_filter)


def _passes(w, up, down, padding):
    """Kernel passes for one upfirdn2d step: a 2-D weight is one pass, a 1-D one is x then y."""
    px0, px1, py0, py1 = padding
    if w.ndim == 2:
        return [(w, (up, up), (down, down), (px0, px1, py0, py1))]
    return [
        (w.reshape(1, -1), (up, 1), (down, 1), (px0, px1, 0, 0)),
        (w.reshape(-1, 1), (1, up), (1, down), (0, 0, py0, py1)),
    ]


class _FilteredLReluTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, up_passes, down_passes, slope, gain, clamp):
        from facegan.ops import _triton_kernels as K

        h = x.contiguous()
        in_shapes = []
        for k, (w, up, down, pad) in enumerate(up_passes):
            in_shapes.append(h.shape)
            bias = b if k == 0 else None
            if k == len(up_passes) - 1:
                h, code = K.upfirdn2d_pass(h, w, up, down, pad, bias=bias, lrelu=(slope, gain, clamp))
            else:
                h = K.upfirdn2d_pass(h, w, up, down, pad, bias=bias)
        for w, up, down, pad in down_passes:
            in_shapes.append(h.shape)
            h = K.upfirdn2d_pass(h, w, up, down, pad)
        ctx.save_for_backward(code)
        ctx.plan = (up_passes, down_passes, in_shapes, slope, gain, clamp, b is not None)
        return h

    @staticmethod
    def backward(ctx, dy):
        (code,) = ctx.saved_tensors
        up_passes, down_passes, in_shapes, slope, gain, _, has_bias = ctx.plan
        passes = list(zip(up_passes + down_passes, in_shapes))
        g = dy
        for (w, up, down, pad), in_shape in reversed(passes[len(up_passes) :]):
            g = fir_adjoint(g, w, in_shape, up, down, pad)
        slopes = torch.tensor([gain, gain * slope, 0.0], dtype=g.dtype, device=g.device)
        g = g * slopes[code.int()]
        for (w, up, down, pad), in_shape in reversed(passes[: len(up_passes)]):
            g = fir_adjoint(g, w, in_shape, up, down, pad)
        db = g.sum([0, 2, 3]) if has_bias and ctx.needs_input_grad[1] else None
        return g, db, None, None, None, None, None


def filtered_lrelu_triton(
    x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None, flip_filter=False
):
    """Fast path: fused upfirdn2d Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""
    _check(x, fu, fd, b, up, down, padding, clamp)
    _, _, padding = check_upfirdn2d(x, fu, up, 1, padding)  # same size errors as the reference
    mid_h, mid_w = (
        x.shape[2] * up + padding[2] + padding[3] - _filter_size(fu)[1] + 1,
        x.shape[3] * up + padding[0] + padding[1] - _filter_size(fu)[0] + 1,
    )
    check_upfirdn2d(x.new_empty([0, 0, mid_h, mid_w]), fd, 1, down, 0)
    identity = torch.ones([1, 1])
    wu = correlation_weight(identity if fu is None else fu.detach(), flip_filter, up**2, x.device)
    wd = correlation_weight(identity if fd is None else fd.detach(), flip_filter, 1, x.device)
    up_passes = _passes(wu, up, 1, padding)
    down_passes = [] if fd is None and down == 1 else _passes(wd, 1, down, (0, 0, 0, 0))  # skip identity
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    return _FilteredLReluTriton.apply(
        x, b, up_passes, down_passes, float(slope), float(gain), None if clamp is None else float(clamp)
    )


def filtered_lrelu(
    x,
    fu=None,
    fd=None,
    b=None,
    up=1,
    down=1,
    padding=0,
    gain=math.sqrt(2),
    slope=0.2,
    clamp=None,
    flip_filter=False,
    impl="auto",
):
    """Bias, upsample by `up` with fu (padding as in upfirdn2d), leaky ReLU (slope) * gain, clamp to
    [-clamp, clamp], filter with fd and downsample by `down`. Filters from setup_filter, None =
    identity. impl: 'auto' | 'ref' | 'triton', see facegan.ops."""
    _check(x, fu, fd, b, up, down, padding, clamp)
    args = (x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    return _dispatch.dispatch(OP, impl, x, lambda: filtered_lrelu_triton(*args), lambda: filtered_lrelu_ref(*args))


def last_impl() -> str | None:
    """'triton' or 'ref': the path the most recent filtered_lrelu call took."""
    return _dispatch.last_impl(OP)
