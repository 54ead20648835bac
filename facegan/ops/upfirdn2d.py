"""Upsample, FIR-filter, downsample of NCHW images (StyleGAN2-ADA / StyleGAN3 `upfirdn2d` semantics).

Per axis: insert up-1 zeros after each sample, pad by (p0, p1) zeros (negative values crop),
correlate with the filter (flipped first unless flip_filter; a 1-D filter is applied separably
along x then y, a 2-D one directly), multiply by gain (gain**0.5 per axis for a 1-D filter) and
keep every down-th sample. Output size per axis: (in*up + p0 + p1 - taps) // down + 1.

Fast path: a direct FIR Triton kernel over output pixels (`_triton_kernels.upfirdn2d_pass`), one
program per (image plane, output tile), one pass per axis for a 1-D filter. Its gradient is the
same kernel run as the adjoint upfirdn2d (up and down swapped, filter reversed), so second-order
gradients work. Reference: zero-insert + pad + grouped conv2d in PyTorch. Filters get no gradient
on the fast path (they are fixed buffers in every StyleGAN model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facegan.errors import UserError
from facegan.ops import _dispatch

OP = "upfirdn2d"


def _pair(value, name: str) -> tuple[int, int]:
    """int -> (v, v); [vx, vy] -> (vx, vy)."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise UserError(f"upfirdn2d: {name}={value!r} must be a positive int or [x, y] of positive ints")
    return pair


def _padding4(padding) -> tuple[int, int, int, int]:
    """int -> all sides; [px, py] -> x and y; [px0, px1, py0, py1] as given."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) == 4:
        return tuple(padding)
    raise UserError(f"upfirdn2d: padding={padding!r} must be an int, [px, py] or [px0, px1, py0, py1]")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(taps along x, taps along y)."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def _check(x, f, up, down, padding):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"upfirdn2d: x must be an NCHW tensor, got shape {getattr(x, 'shape', None)}")
    if f is not None and (f.ndim not in (1, 2) or f.numel() == 0):
        raise UserError(f"upfirdn2d: f must be a 1-D or 2-D filter (see setup_filter), got shape {tuple(f.shape)}")
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    out_w = (x.shape[3] * upx + px0 + px1 - fw) // downx + 1
    out_h = (x.shape[2] * upy + py0 + py1 - fh) // downy + 1
    if out_w < 1 or out_h < 1:
        raise UserError(
            f"upfirdn2d: input {tuple(x.shape[2:])} with padding {padding} and a {fh}x{fw} filter "
            "leaves no output pixels; pad more or use a smaller filter"
        )
    return (upx, upy), (downx, downy), (px0, px1, py0, py1)


def setup_filter(f, normalize=True, flip_filter=False, gain=1, separable=None, device=None):
    """Filter as a float32 tensor ready for upfirdn2d: a 1-D tap list becomes separable (kept 1-D)
    when it has >= 8 taps, else its outer product; normalized to sum 1, optionally flipped, times
    gain**(ndim/2) so the total gain over both axes is `gain`. None means the identity filter [1]."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise UserError(f"setup_filter: expected a 1-D or 2-D filter, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise UserError("setup_filter: separable=True needs a 1-D filter")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device) if device is not None else f


def upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Reference path: zero insertion, F.pad + slicing, grouped conv2d, strided slice."""
    (upx, upy), (downx, downy), (px0, px1, py0, py1) = _check(x, f, up, down, padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape

    x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # conv2d correlates; flipping first makes it a true convolution, as upfirdn2d defines.
    f = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, f.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[:, :, ::downy, ::downx]


class _FirPassTriton(torch.autograd.Function):
    """One direct-FIR kernel launch with a 2-D correlation weight `w` (already flipped and scaled)."""

    @staticmethod
    def forward(ctx, x, w, up, down, padding):
        from facegan.ops import _triton_kernels as K

        ctx.save_for_backward(w)
        ctx.geometry = (x.shape, up, down, padding)
        return K.upfirdn2d_pass(x.contiguous(), w, up, down, padding)

    @staticmethod
    def backward(ctx, dy):
        (w,) = ctx.saved_tensors
        in_shape, up, down, padding = ctx.geometry
        return fir_adjoint(dy, w, in_shape, up, down, padding), None, None, None, None


def adjoint_padding(in_shape, out_shape, w_shape, up, down, padding):
    """Padding that makes upfirdn2d(dy, reversed w, up=down, down=up) the exact adjoint (x-gradient)."""
    (upx, upy), (downx, downy), (px0, _, py0, _) = up, down, padding
    fh, fw = w_shape
    return (
        fw - px0 - 1,
        in_shape[3] * upx - out_shape[3] * downx + px0 - upx + 1,
        fh - py0 - 1,
        in_shape[2] * upy - out_shape[2] * downy + py0 - upy + 1,
    )


def fir_adjoint(dy, w, in_shape, up, down, padding):
    pad = adjoint_padding(in_shape, dy.shape, w.shape, up, down, padding)
    return _FirPassTriton.apply(dy, w.flip([0, 1]), down, up, pad)


def correlation_weight(f, flip_filter, gain, device, dtype=torch.float32):
    """The weight the kernel correlates with: flipped unless flip_filter, times gain**(ndim/2)."""
    w = f.to(device=device, dtype=dtype) * (gain ** (f.ndim / 2))
    return (w if flip_filter else w.flip(list(range(w.ndim)))).contiguous()


def upfirdn2d_triton(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Fast path: Triton direct-FIR kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    up, down, (px0, px1, py0, py1) = _check(x, f, up, down, padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32)
    w = correlation_weight(f.detach(), flip_filter, gain, x.device)
    if w.ndim == 2:
        return _FirPassTriton.apply(x, w, up, down, (px0, px1, py0, py1))
    x = _FirPassTriton.apply(x, w.reshape(1, -1), (up[0], 1), (down[0], 1), (px0, px1, 0, 0))
    return _FirPassTriton.apply(x, w.reshape(-1, 1), (1, up[1]), (1, down[1]), (0, 0, py0, py1))


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample by zero insertion, pad (negative crops), FIR-filter with f, keep every down-th sample.
    up/down: int or [x, y]; padding: int, [px, py] or [px0, px1, py0, py1]; f from setup_filter
    (None = identity). impl: 'auto' | 'ref' | 'triton', see facegan.ops."""
    _check(x, f, up, down, padding)
    args = (x, f, up, down, padding, flip_filter, gain)
    return _dispatch.dispatch(OP, impl, x, lambda: upfirdn2d_triton(*args), lambda: upfirdn2d_ref(*args))


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Upsample by `up` with filter f; output is exactly up times the input size (plus padding).
    Gain is multiplied by up*up to make up for the inserted zeros."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Low-pass with f then keep every down-th sample; output is the input size / down (plus padding)."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="auto"):
    """Filter with f keeping the input size (plus padding)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def last_impl() -> str | None:
    """'triton' or 'ref': the path the most recent upfirdn2d (or up/down/filter2d) call took."""
    return _dispatch.last_impl(OP)
