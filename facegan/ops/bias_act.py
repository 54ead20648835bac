"""Fused bias + activation + gain + clamp (StyleGAN2-ADA / StyleGAN3 `bias_act` semantics).

y = clamp(act(x + b, alpha) * gain, -clamp, clamp), with b broadcast along `dim`.
Fast path: one elementwise Triton kernel forward and one backward (`_triton_kernels`), wrapped in
autograd Functions that also give second-order gradients (R1 and path-length regularisation
differentiate through the discriminator/generator twice). Reference: plain PyTorch ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from facegan.errors import UserError
from facegan.ops import _dispatch

OP = "bias_act"


@dataclass(frozen=True)
class Activation:
    code: int  # index the Triton kernels switch on
    default_alpha: float
    default_gain: float
    piecewise_linear: bool  # second derivative is zero almost everywhere


# Default gains keep the activation's output variance near its input's (He init), as in StyleGAN2.
ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(0, 0.0, 1.0, True),
    "relu": Activation(1, 0.0, math.sqrt(2), True),
    "lrelu": Activation(2, 0.2, math.sqrt(2), True),
    "tanh": Activation(3, 0.0, 1.0, False),
    "sigmoid": Activation(4, 0.0, 1.0, False),
    "elu": Activation(5, 0.0, 1.0, False),
    "selu": Activation(6, 0.0, 1.0, False),
    "softplus": Activation(7, 0.0, 1.0, False),
    "swish": Activation(8, 0.0, math.sqrt(2), False),
}
ACTIVATIONS["silu"] = ACTIVATIONS["swish"]  # same function, PyTorch's name for it

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _parse(x, b, dim, act, alpha, gain, clamp) -> tuple[Activation, float, float, float | None]:
    if act not in ACTIVATIONS:
        raise UserError(f"bias_act: unknown act={act!r}; use one of {', '.join(ACTIVATIONS)}")
    if clamp is not None and clamp < 0:
        raise UserError(f"bias_act: clamp={clamp} must be None or >= 0")
    if b is not None:
        if not 0 <= dim < x.ndim:
            raise UserError(f"bias_act: dim={dim} is outside x's {x.ndim} dimensions")
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise UserError(
                f"bias_act: b has shape {tuple(b.shape)}, expected ({x.shape[dim]},) to match x.shape[{dim}]"
            )
    spec = ACTIVATIONS[act]
    alpha = float(spec.default_alpha if alpha is None else alpha)
    gain = float(spec.default_gain if gain is None else gain)
    return spec, alpha, gain, (None if clamp is None else float(clamp))


def _activate_torch(z: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return torch.relu(z)
    if act == "lrelu":
        return torch.nn.functional.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return torch.nn.functional.elu(z)
    if act == "selu":
        return torch.nn.functional.selu(z)
    if act == "softplus":
        return torch.nn.functional.softplus(z)
    return torch.nn.functional.silu(z)  # swish / silu


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Reference path: plain PyTorch ops, autograd for gradients.
    Like the fast path, b is cast to x's dtype so both paths return x's dtype."""
    _, alpha, gain, clamp = _parse(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = _activate_torch(x, act, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _second_derivative(z: torch.Tensor, act: str) -> torch.Tensor:
    """d2 act / dz2 in PyTorch ops; used only by double backward of the smooth activations."""
    if act == "tanh":
        t = torch.tanh(z)
        return -2 * t * (1 - t * t)
    if act in ("sigmoid", "softplus", "swish", "silu"):
        s = torch.sigmoid(z)
        if act == "sigmoid":
            return s * (1 - s) * (1 - 2 * s)
        if act == "softplus":
            return s * (1 - s)
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    scale = SELU_SCALE * SELU_ALPHA if act == "selu" else 1.0
    return torch.where(z > 0, torch.zeros_like(z), scale * torch.exp(z))  # elu, selu


class _BiasActTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        from facegan.ops import _triton_kernels as K

        x = x.contiguous()
        b = b.contiguous() if b is not None else None
        ctx.save_for_backward(x, b)
        ctx.args = (dim, act, alpha, gain, clamp)
        ctx.has_bias = b is not None
        return K.bias_act_forward(x, b, dim, ACTIVATIONS[act].code, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = _BiasActGradTriton.apply(dy, x, b, *ctx.args)
        db = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            dim = ctx.args[0]
            db = dx.sum([i for i in range(dx.ndim) if i != dim])
        return dx, db, None, None, None, None, None


class _BiasActGradTriton(torch.autograd.Function):
    """dx = dy * act'(x + b) * gain * [inside clamp]; differentiable again for R1/path-length terms."""

    @staticmethod
    def forward(ctx, dy, x, b, dim, act, alpha, gain, clamp):
        from facegan.ops import _triton_kernels as K

        ctx.save_for_backward(dy, x, b)
        ctx.args = (dim, act, alpha, gain, clamp)
        return K.bias_act_backward(dy.contiguous(), x, b, dim, ACTIVATIONS[act].code, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, d_dx):
        dy, x, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.args
        # dx is linear in dy, so its dy-gradient is the same kernel applied to d_dx.
        d_dy = _BiasActGradTriton.apply(d_dx, x, b, *ctx.args) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if not ACTIVATIONS[act].piecewise_linear and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            # Second-order term in PyTorch ops: only smooth activations have one, and no StyleGAN
            # layer uses them on a double-backward path, so speed matters little here.
            z = x if b is None else x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
            y_pre = _activate_torch(z, act, alpha) * gain
            inside = torch.ones_like(z) if clamp is None else (y_pre.abs() <= clamp).to(z.dtype)
            d_x = d_dx * dy * _second_derivative(z, act) * gain * inside
            if b is not None and ctx.needs_input_grad[2]:
                d_b = d_x.sum([i for i in range(d_x.ndim) if i != dim])
        elif ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_x = torch.zeros_like(x)
            d_b = torch.zeros_like(b) if b is not None else None
        return d_dy, d_x, d_b, None, None, None, None, None


def bias_act_triton(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Fast path: Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""
    _, alpha, gain, clamp = _parse(x, b, dim, act, alpha, gain, clamp)
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    return _BiasActTriton.apply(x, b, dim, act, alpha, gain, clamp)


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="auto"):
    """Add bias `b` along `dim`, apply `act` (alpha = its shape parameter, e.g. the lrelu slope,
    default 0.2), multiply by `gain` (default sqrt(2) for relu/lrelu/swish, 1 otherwise) and clamp
    to [-clamp, clamp] (None: no clamp). impl: 'auto' | 'ref' | 'triton', see facegan.ops."""
    _parse(x, b, dim, act, alpha, gain, clamp)  # bad arguments raise before any path is chosen
    args = (x, b, dim, act, alpha, gain, clamp)
    return _dispatch.dispatch(OP, impl, x, lambda: bias_act_triton(*args), lambda: bias_act_ref(*args))


def last_impl() -> str | None:
    """'triton' or 'ref': the path the most recent bias_act call took."""
    return _dispatch.last_impl(OP)
