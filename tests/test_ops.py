"""StyleGAN custom ops: every Triton kernel equals its PyTorch reference (forward, gradients of x
and b, second order where StyleGAN's R1/path-length penalties need it), and the references match
the upfirdn2d definition. Triton runs on CPU through its interpreter, so TRITON_INTERPRET must be
set before the kernels module is first imported (it is imported lazily by the first Triton call).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.signal import convolve2d  # noqa: E402

from facegan import ops  # noqa: E402
from facegan.errors import UserError  # noqa: E402
from facegan.ops import _dispatch  # noqa: E402

bias_act_module = importlib.import_module("facegan.ops.bias_act")  # the name facegan.ops.bias_act is the function

needs_triton = pytest.mark.skipif(not _dispatch.triton_importable(), reason="the triton package is not installed")

# (atol, rtol) against a float64 reference; half types are compared after rounding the inputs.
TOL = {torch.float32: (2e-5, 1e-4), torch.float16: (2e-2, 2e-2), torch.bfloat16: (8e-2, 5e-2)}


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen)


def _assert_close(actual, expected, dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


def _compare(fn, inputs, dtype, grad_inputs, **kwargs):
    """Run fn's Triton path in `dtype` and its reference in float64 on the same (rounded) inputs;
    compare outputs and the gradients of `grad_inputs` for a random upstream gradient."""
    gen = torch.Generator().manual_seed(1)
    low = {k: (v.to(dtype) if k != "f" and torch.is_tensor(v) else v) for k, v in inputs.items()}
    ref_in = {k: (v.double() if torch.is_tensor(v) else v) for k, v in low.items()}
    for d in (low, ref_in):
        for k in grad_inputs:
            d[k] = d[k].detach().requires_grad_(True)
    y = fn(**low, impl="triton", **kwargs)
    y_ref = fn(**ref_in, impl="ref", **kwargs)
    assert y.dtype == dtype and y.shape == y_ref.shape
    scale = max(1.0, y_ref.abs().max().item())
    _assert_close(y, y_ref, dtype, scale)
    dy = torch.randn(y.shape, generator=gen)
    grads = torch.autograd.grad(y, [low[k] for k in grad_inputs], dy.to(dtype))
    grads_ref = torch.autograd.grad(y_ref, [ref_in[k] for k in grad_inputs], dy.double())
    for name, g, g_ref in zip(grad_inputs, grads, grads_ref):
        assert g.dtype == dtype, name
        _assert_close(g, g_ref, dtype, max(1.0, g_ref.abs().max().item()))
    return y_ref


# ---------------------------------------------------------------------------------------- bias_act


@needs_triton
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_triton_matches_reference(act, clamp):
    gen = torch.Generator().manual_seed(0)
    x, b = 2 * _rand(gen, 3, 5, 7, 13), _rand(gen, 5)
    _compare(ops.bias_act, {"x": x, "b": b}, torch.float32, ["x", "b"], act=act, clamp=clamp)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_act_half_precision(dtype):
    gen = torch.Generator().manual_seed(0)
    _compare(
        ops.bias_act, {"x": _rand(gen, 2, 6, 9, 11), "b": _rand(gen, 6)}, dtype, ["x", "b"], act="lrelu", clamp=2.0
    )


@needs_triton
def test_bias_act_other_dim_no_bias_and_custom_alpha_gain():
    gen = torch.Generator().manual_seed(0)
    x, b = _rand(gen, 4, 9, 6), _rand(gen, 6)
    _compare(ops.bias_act, {"x": x, "b": b}, torch.float32, ["x", "b"], dim=2, act="lrelu", alpha=0.1, gain=3.0)
    _compare(ops.bias_act, {"x": x}, torch.float32, ["x"], act="swish")


def test_bias_act_reference_semantics():
    x = torch.tensor([[-2.0, 0.5], [1.0, -0.25]])
    b = torch.tensor([1.0, -1.0])  # along dim=1
    y = ops.bias_act(x, b, act="lrelu", clamp=0.9, impl="ref")
    z = torch.tensor([[-1.0, -0.5], [2.0, -1.25]])
    expected = (torch.where(z > 0, z, 0.2 * z) * math.sqrt(2)).clamp(-0.9, 0.9)
    torch.testing.assert_close(y, expected)
    assert ops.bias_act(x, act="tanh", impl="ref").equal(torch.tanh(x))  # gain 1 by default


@needs_triton
@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_bias_act_second_order_gradients(act):
    """R1-style penalty: gradient of a gradient norm through the op."""
    gen = torch.Generator().manual_seed(0)
    x0, b0 = _rand(gen, 2, 3, 5, 7), _rand(gen, 3)
    results = []
    for impl in ("triton", "ref"):
        x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        y = ops.bias_act(x, b, act=act, clamp=1.5, impl=impl)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        results.append((x.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------- upfirdn2d


def _filter(gen, shape):
    """Random positive, asymmetric filter so a wrong flip or axis swap changes the result."""
    return ops.setup_filter(torch.rand(shape, generator=gen) + 0.1, separable=len(shape) == 1)


UPFIRDN2D_CASES = [  # (up, down, padding, filter shape, flip_filter, gain)
    (1, 1, 0, (4, 4), False, 1),
    (2, 1, [1, 2, -1, 3], (4, 4), False, 4),
    (1, 2, [2, 1, 0, -2], (3, 5), True, 1),
    (2, 2, 1, (4, 4), False, 1),
    ([2, 1], [1, 2], [3, 0, 1, 2], (2, 3), False, 2),
    (2, 1, [5, 6, 3, 7], (10,), False, 4),
    (1, 2, [6, -1, 4, 2], (9,), True, 1),
    (4, 1, [2, 1, 3, 0], (3, 2), False, 1),
]


@needs_triton
@pytest.mark.parametrize("up,down,padding,fshape,flip,gain", UPFIRDN2D_CASES)
def test_upfirdn2d_triton_matches_reference(up, down, padding, fshape, flip, gain):
    gen = torch.Generator().manual_seed(0)
    x, f = _rand(gen, 1, 2, 7, 13), _filter(gen, fshape)
    _compare(
        ops.upfirdn2d,
        {"x": x, "f": f},
        torch.float32,
        ["x"],
        up=up,
        down=down,
        padding=padding,
        flip_filter=flip,
        gain=gain,
    )


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_upfirdn2d_half_precision(dtype):
    gen = torch.Generator().manual_seed(0)
    _compare(
        ops.upfirdn2d,
        {"x": _rand(gen, 1, 2, 7, 13), "f": _filter(gen, (4, 4))},
        dtype,
        ["x"],
        up=2,
        down=1,
        padding=[2, 1, 1, 2],
        gain=4,
    )


def _upfirdn2d_by_definition(x, f, up, down, padding, flip_filter, gain):
    """Zero-insert, pad/crop, true 2-D convolution ('valid'), subsample: written from the
    definition with numpy/scipy, independent of both implementations."""
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    px0, px1, py0, py1 = (padding,) * 4 if isinstance(padding, int) else padding
    f2 = f.numpy() if f.ndim == 2 else np.outer(f.numpy(), f.numpy())
    f2 = (f2[::-1, ::-1] if flip_filter else f2) * gain
    out = []
    for plane in x.reshape(-1, *x.shape[2:]).double().numpy():
        h, w = plane.shape
        z = np.zeros((h * upy, w * upx))
        z[::upy, ::upx] = plane
        z = np.pad(z, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
        z = z[max(-py0, 0) : z.shape[0] - max(-py1, 0), max(-px0, 0) : z.shape[1] - max(-px1, 0)]
        out.append(convolve2d(z, f2, mode="valid")[::downy, ::downx])
    return torch.from_numpy(np.stack(out)).reshape(*x.shape[:2], *out[0].shape)


@pytest.mark.parametrize("up,down,padding,fshape,flip,gain", UPFIRDN2D_CASES[1:3] + UPFIRDN2D_CASES[4:7])
def test_upfirdn2d_reference_matches_definition(up, down, padding, fshape, flip, gain):
    gen = torch.Generator().manual_seed(0)
    x, f = _rand(gen, 2, 3, 7, 13), _filter(gen, fshape)
    # gain is per image: a 1-D filter carries gain**0.5 on each axis, so its outer product carries gain.
    expected = _upfirdn2d_by_definition(x, f, up, down, padding, flip, gain)
    got = ops.upfirdn2d(x.double(), f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl="ref")
    torch.testing.assert_close(got, expected)


def test_setup_filter_normalizes_and_chooses_separable():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    assert ops.setup_filter(list(range(1, 9))).ndim == 1  # >= 8 taps stay separable
    torch.testing.assert_close(ops.setup_filter([1, 2], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(ops.setup_filter([[1.0, 2.0]], flip_filter=True), torch.tensor([[2.0, 1.0]]) / 3)


@pytest.mark.parametrize("helper,factor", [("upsample2d", 2), ("downsample2d", 0.5), ("filter2d", 1)])
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1]])
def test_resampling_helpers_keep_size_and_constants(helper, factor, taps):
    """Users rely on exact output sizes and on a flat image staying flat away from the borders
    (for symmetric low-pass filters, whose even and odd taps carry equal weight)."""
    f = ops.setup_filter(taps)
    x = torch.full([1, 2, 16, 12], 3.0)
    y = getattr(ops, helper)(x, f, impl="ref")
    assert y.shape == (1, 2, int(16 * factor), int(12 * factor))
    border = 8
    torch.testing.assert_close(
        y[..., border:-border, border:-border], torch.full_like(y, 3.0)[..., border:-border, border:-border]
    )


@needs_triton
@pytest.mark.parametrize("helper", ["upsample2d", "downsample2d", "filter2d"])
def test_resampling_helpers_triton_matches_reference(helper):
    gen = torch.Generator().manual_seed(0)
    x, f = _rand(gen, 1, 2, 7, 13), _filter(gen, (4, 4))
    _compare(getattr(ops, helper), {"x": x, "f": f}, torch.float32, ["x"], padding=[1, 0, -1, 2])


@needs_triton
def test_upfirdn2d_second_order_gradients():
    """R1 through a StyleGAN2 discriminator block: downsample after lrelu, gradient of a gradient."""
    gen = torch.Generator().manual_seed(0)
    x0, b0, f = _rand(gen, 1, 2, 8, 9), _rand(gen, 2), _filter(gen, (4, 4))
    results = []
    for impl in ("triton", "ref"):
        x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        y = ops.downsample2d(ops.bias_act(x, b, act="lrelu", impl=impl), f, impl=impl)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        results.append((x.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_upfirdn2d_rejects_empty_output():
    with pytest.raises(UserError, match="no output pixels"):
        ops.upfirdn2d(torch.zeros(1, 1, 3, 3), ops.setup_filter([1] * 9), impl="ref")


# ---------------------------------------------------------------------------------- filtered_lrelu

FILTERED_LRELU_CASES = [  # (up, down, padding, fu taps, fd taps, clamp, flip_filter)
    (2, 2, [5, 6, 4, 7], (12,), (12,), 0.5, False),  # StyleGAN3 layer: separable up/down filters
    (1, 1, 0, None, None, None, False),
    (4, 2, [2, 1, 3, 0], (4, 4), (8,), 1.0, True),
    (2, 1, [-1, 3, 2, -2], (3, 2), (2, 3), None, False),
]


@needs_triton
@pytest.mark.parametrize("up,down,padding,fu_shape,fd_shape,clamp,flip", FILTERED_LRELU_CASES)
def test_filtered_lrelu_triton_matches_reference(up, down, padding, fu_shape, fd_shape, clamp, flip):
    gen = torch.Generator().manual_seed(0)
    x, b = _rand(gen, 1, 2, 7, 13), _rand(gen, 2)
    fu = _filter(gen, fu_shape) if fu_shape else None
    fd = _filter(gen, fd_shape) if fd_shape else None
    y_ref = _compare(
        ops.filtered_lrelu,
        {"x": x, "b": b},
        torch.float32,
        ["x", "b"],
        fu=fu,
        fd=fd,
        up=up,
        down=down,
        padding=padding,
        clamp=clamp,
        flip_filter=flip,
    )
    if clamp is not None:
        assert y_ref.abs().max() > 0  # the clamp case must exercise non-trivial output


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_filtered_lrelu_half_precision(dtype):
    gen = torch.Generator().manual_seed(0)
    fu, fd = _filter(gen, (8,)), _filter(gen, (8,))
    _compare(
        ops.filtered_lrelu,
        {"x": _rand(gen, 1, 2, 7, 13), "b": _rand(gen, 2)},
        dtype,
        ["x", "b"],
        fu=fu,
        fd=fd,
        up=2,
        down=2,
        padding=[4, 4, 3, 5],
        clamp=1.0,
    )


@needs_triton
def test_filtered_lrelu_second_order_gradients():
    """Path-length regularisation differentiates the generator's gradient again."""
    gen = torch.Generator().manual_seed(0)
    x0, b0 = _rand(gen, 1, 2, 6, 7), _rand(gen, 2)
    fu, fd = _filter(gen, (8,)), _filter(gen, (4, 4))
    results = []
    for impl in ("triton", "ref"):
        x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        y = ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=4, clamp=1.0, impl=impl)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gx.square().sum() + (gx * x).sum()).backward()
        results.append((x.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------- impl selection


@needs_triton
def test_auto_uses_reference_on_cpu_and_reports_it():
    x = torch.randn(1, 2, 5, 5)
    ops.bias_act(x, act="relu")
    ops.upfirdn2d(x, None)
    ops.filtered_lrelu(x)
    assert [ops.last_impl(op) for op in ("bias_act", "upfirdn2d", "filtered_lrelu")] == ["ref"] * 3
    ops.bias_act(x, act="relu", impl="triton")
    assert ops.last_impl("bias_act") == "triton"


@needs_triton
def test_auto_falls_back_loudly_once_when_triton_fails(monkeypatch, caplog):
    monkeypatch.setattr(_dispatch, "on_gpu", lambda x: True)
    monkeypatch.setattr(_dispatch, "_fallbacks", {})
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(bias_act_module, "bias_act_triton", broken)
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING):
        y1 = ops.bias_act(x, act="lrelu")
        y2 = ops.bias_act(x, act="lrelu")
    assert len(calls) == 1 and "PTX assembly failed" in ops.fallbacks()["bias_act"]
    assert sum("Triton kernel failed" in r.message for r in caplog.records) == 1
    assert ops.last_impl("bias_act") == "ref"
    torch.testing.assert_close(y1, ops.bias_act_ref(x, act="lrelu"))
    torch.testing.assert_close(y2, y1)
    with pytest.raises(RuntimeError, match="PTX"):  # an explicit request never falls back
        ops.bias_act(x, act="lrelu", impl="triton")


@needs_triton
def test_explicit_triton_on_cpu_without_interpreter_is_a_user_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(UserError, match="TRITON_INTERPRET=1"):
        ops.upfirdn2d(torch.zeros(1, 1, 4, 4), None, impl="triton")
    with pytest.raises(UserError, match="impl="):
        ops.bias_act(torch.zeros(2), impl="cuda")
