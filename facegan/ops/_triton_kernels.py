"""Triton kernels behind the fast paths of bias_act, upfirdn2d and filtered_lrelu.

Imported only on the first Triton call: triton.jit decides between compiled and interpreted
kernels when a kernel is defined, so importing this module lazily lets TRITON_INTERPRET=1 (CI on
CPU) be set any time before that first call. Kernels accumulate in float32 and store x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ELEMENTWISE_BLOCK = 1024
TILE_H, TILE_W = 16, 32

# Codes for the activation switch; must match bias_act.ACTIVATIONS[...].code.
LINEAR, RELU, LRELU, TANH, SIGMOID, ELU, SELU, SOFTPLUS, SWISH = range(9)
SELU_SCALE: tl.constexpr = tl.constexpr(1.0507009873554804934193349852946)
SELU_ALPHA: tl.constexpr = tl.constexpr(1.6732632423543772848170429916717)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _activate(z, alpha, ACT: tl.constexpr):
    if ACT == 1:
        y = tl.maximum(z, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        y = 2.0 * _sigmoid(2.0 * z) - 1.0  # tanh, from exp so it saturates cleanly at +-1
    elif ACT == 4:
        y = _sigmoid(z)
    elif ACT == 5:
        y = tl.where(z > 0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)
    elif ACT == 6:
        y = SELU_SCALE * tl.where(z > 0, z, SELU_ALPHA * (tl.exp(tl.minimum(z, 0.0)) - 1.0))
    elif ACT == 7:
        y = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))  # softplus without overflow
    elif ACT == 8:
        y = z * _sigmoid(z)
    else:
        y = z
    return y


@triton.jit
def _activate_slope(z, alpha, ACT: tl.constexpr):
    """d act / dz for ACT != 0 (linear needs no factor), with PyTorch's sub-gradient at 0
    (relu/lrelu: the z<=0 side)."""
    if ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT == 3:
        t = 2.0 * _sigmoid(2.0 * z) - 1.0
        d = 1.0 - t * t
    elif ACT == 4:
        s = _sigmoid(z)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(z > 0, 1.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = SELU_SCALE * tl.where(z > 0, 1.0, SELU_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        d = _sigmoid(z)
    else:  # swish
        s = _sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    return d


@triton.jit
def _bias_act_kernel(
    x_ptr,
    b_ptr,
    dy_ptr,
    out_ptr,
    numel,
    channels,
    inner,
    alpha,
    gain,
    clamp,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """GRAD=False: out = clamp(act(x + b) * gain). GRAD=True: out = dy * d(that)/dx."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + (offs // inner) % channels, mask=mask, other=0.0).to(tl.float32)
    y = _activate(z, alpha, ACT) * gain
    if GRAD:
        dx = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32) * gain
        if ACT != 0:
            dx *= _activate_slope(z, alpha, ACT)
        if HAS_CLAMP:
            dx = tl.where((y >= -clamp) & (y <= clamp), dx, 0.0)  # torch.clamp passes the gradient at the bounds
        tl.store(out_ptr + offs, dx.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        if HAS_CLAMP:
            y = tl.minimum(tl.maximum(y, -clamp), clamp)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _bias_act_launch(x, b, dy, dim, act_code, alpha, gain, clamp, grad):
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:
        return out
    inner = 1
    for size in x.shape[dim + 1 :]:
        inner *= size
    channels = x.shape[dim] if b is not None else 1
    grid = (triton.cdiv(numel, ELEMENTWISE_BLOCK),)
    _bias_act_kernel[grid](
        x,
        b if b is not None else x,
        dy if dy is not None else x,
        out,
        numel,
        channels,
        inner,
        float(alpha),
        float(gain),
        float(clamp if clamp is not None else 0.0),
        ACT=act_code,
        HAS_BIAS=b is not None,
        HAS_CLAMP=clamp is not None,
        GRAD=grad,
        BLOCK=ELEMENTWISE_BLOCK,
    )
    return out


def bias_act_forward(x, b, dim, act_code, alpha, gain, clamp):
    return _bias_act_launch(x, b, None, dim, act_code, alpha, gain, clamp, grad=False)


def bias_act_backward(dy, x, b, dim, act_code, alpha, gain, clamp):
    return _bias_act_launch(x, b, dy, dim, act_code, alpha, gain, clamp, grad=True)


@triton.jit
def _upfirdn2d_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    code_ptr,
    channels,
    in_h,
    in_w,
    out_h,
    out_w,
    pad_x0,
    pad_y0,
    taps_y,
    taps_x,
    phase_taps_y,
    phase_taps_x,
    shift_y,
    shift_x,
    slope,
    gain,
    clamp,
    UP_X: tl.constexpr,
    UP_Y: tl.constexpr,
    DOWN_X: tl.constexpr,
    DOWN_Y: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    LRELU: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """Direct FIR over one output tile of one image plane, visiting only the non-zero taps.

    Per axis, output o correlates tap t with position u = o*DOWN + t - pad0 of the zero-inserted
    image, which holds input sample i = u / UP when UP divides u. So for each output we walk the
    input samples i = i_last, i_last - 1, ... (phase_taps = ceil(taps / UP) of them) with
    i_last = floor((o*DOWN - pad0 + taps - 1) / UP) and tap t = i*UP + pad0 - o*DOWN, skipping
    t < 0 (polyphase: up**2 fewer iterations than looping over every tap of a 2-D filter).
    `shift` (>= ceil(pad0 / UP)) keeps the floor division on non-negative numbers.
    Optional prologue: + bias[c] on every real input sample. Optional epilogue (filtered_lrelu):
    leaky ReLU, gain, clamp, and a per-pixel int8 code for the backward (0: z>0, 1: z<=0, 2: clamped).
    """
    plane = tl.program_id(0)
    oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    x_plane = x_ptr + plane.to(tl.int64) * in_h * in_w
    if HAS_BIAS:
        bias = tl.load(b_ptr + plane % channels).to(tl.float32)
    last_iy = (oy * DOWN_Y - pad_y0 + taps_y - 1 + UP_Y * shift_y) // UP_Y - shift_y
    last_ix = (ox * DOWN_X - pad_x0 + taps_x - 1 + UP_X * shift_x) // UP_X - shift_x

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for ky in range(phase_taps_y):
        iy = last_iy - ky
        ty = iy * UP_Y + pad_y0 - oy * DOWN_Y
        row_ok = (ty >= 0) & (iy >= 0) & (iy < in_h)
        for kx in range(phase_taps_x):
            ix = last_ix - kx
            tx = ix * UP_X + pad_x0 - ox * DOWN_X
            ok = row_ok & (tx >= 0) & (ix >= 0) & (ix < in_w)
            v = tl.load(x_plane + iy * in_w + ix, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                v = tl.where(ok, v + bias, 0.0)
            acc += v * tl.load(w_ptr + ty * taps_x + tx, mask=ok, other=0.0)

    out_ok = (oy < out_h) & (ox < out_w)
    out_offs = plane.to(tl.int64) * out_h * out_w + oy * out_w + ox
    if LRELU:
        code = tl.where(acc > 0, 0, 1).to(tl.int8)
        acc = tl.where(acc > 0, acc, acc * slope) * gain
        if HAS_CLAMP:
            code = tl.where((acc < -clamp) | (acc > clamp), 2, code).to(tl.int8)
            acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
        tl.store(code_ptr + out_offs, code, mask=out_ok)
    tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def upfirdn2d_pass(x, w, up, down, padding, bias=None, lrelu=None):
    """One kernel launch. x: contiguous NCHW; w: 2-D float32 correlation weight [taps_y, taps_x];
    up/down: (x, y); padding: (px0, px1, py0, py1); bias: [C] or None; lrelu: None or
    (slope, gain, clamp) to fuse filtered_lrelu's activation, which also returns the int8 codes."""
    n, c, in_h, in_w = x.shape
    taps_y, taps_x = w.shape
    (up_x, up_y), (down_x, down_y), (px0, px1, py0, py1) = up, down, padding
    out_h = (in_h * up_y + py0 + py1 - taps_y) // down_y + 1
    out_w = (in_w * up_x + px0 + px1 - taps_x) // down_x + 1
    y = torch.empty([n, c, out_h, out_w], dtype=x.dtype, device=x.device)
    code = torch.empty(y.shape, dtype=torch.int8, device=x.device) if lrelu is not None else y
    slope, gain, clamp = lrelu if lrelu is not None else (0.0, 1.0, None)
    grid = (n * c, triton.cdiv(out_h, TILE_H), triton.cdiv(out_w, TILE_W))
    if y.numel() > 0:
        _upfirdn2d_kernel[grid](
            x,
            w.to(device=x.device, dtype=torch.float32).contiguous(),
            bias.contiguous() if bias is not None else w,
            y,
            code,
            c,
            in_h,
            in_w,
            out_h,
            out_w,
            px0,
            py0,
            taps_y,
            taps_x,
            triton.cdiv(taps_y, up_y),
            triton.cdiv(taps_x, up_x),
            max(0, triton.cdiv(py0, up_y)),
            max(0, triton.cdiv(px0, up_x)),
            float(slope),
            float(gain),
            float(clamp if clamp is not None else 0.0),
            UP_X=up_x,
            UP_Y=up_y,
            DOWN_X=down_x,
            DOWN_Y=down_y,
            HAS_BIAS=bias is not None,
            LRELU=lrelu is not None,
            HAS_CLAMP=clamp is not None,
            BLOCK_H=TILE_H,
            BLOCK_W=TILE_W,
        )
    return (y, code) if lrelu is not None else y
