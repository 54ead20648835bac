"""Choosing the Triton fast path or the PyTorch reference path for each custom op, visibly.

Rules (shared by bias_act, upfirdn2d, filtered_lrelu):
  impl='ref'    always the PyTorch reference.
  impl='triton' always the Triton kernels; on a CPU tensor this needs TRITON_INTERPRET=1 in the
                environment before the kernels are first used (that is how CI runs them).
  impl='auto'   Triton on CUDA tensors when the triton package imports, the reference otherwise.
                If the Triton forward fails (e.g. the kernel does not compile on this GPU), the op
                logs one warning, records the failure in `fallbacks()` (the training loop copies it
                into train_stats.json and the report shows it) and uses the reference from then
                on; an explicit impl='triton' raises instead. Out of memory is raised, never a
                reason to fall back.
`last_impl(op)` says which path the op's most recent call took.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch

from facegan.errors import UserError

log = logging.getLogger(__name__)

IMPLS = ("auto", "ref", "triton")
_last_impl: dict[str, str] = {}
_fallbacks: dict[str, str] = {}


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def on_gpu(x: torch.Tensor) -> bool:
    return x.device.type == "cuda"


def _choose(op: str, impl: str, x: torch.Tensor) -> str:
    if impl not in IMPLS:
        raise UserError(f"{op}: impl={impl!r} is unknown; use one of {', '.join(IMPLS)}")
    if impl == "ref":
        return "ref"
    if impl == "triton":
        if not triton_importable():
            raise UserError(f"{op}: impl='triton' needs the triton package: install triton or use impl='auto'")
        if not on_gpu(x) and not interpreter_enabled():
            raise UserError(
                f"{op}: impl='triton' on a {x.device.type} tensor needs TRITON_INTERPRET=1 set before the "
                "first Triton call; move the tensor to CUDA or use impl='auto'"
            )
        return "triton"
    if on_gpu(x) and triton_importable() and op not in _fallbacks:
        return "triton"
    return "ref"


def dispatch(
    op: str, impl: str, x: torch.Tensor, fast: Callable[[], torch.Tensor], ref: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """Run `fast` or `ref` by the rules above and remember which one ran."""
    chosen = _choose(op, impl, x)
    if chosen == "ref":
        out = ref()
    else:
        try:
            out = fast()
        except torch.OutOfMemoryError:
            raise  # out of memory is the run's problem, not the kernel's: the reference would need more
        except Exception as err:  # compile/launch failures inside Triton; arguments were checked before
            if impl == "triton":
                raise
            _fallbacks[op] = f"{type(err).__name__}: {err}"
            log.warning(
                "%s: Triton kernel failed (%s); using the PyTorch reference from now on",
                op,
                _fallbacks[op].splitlines()[0],
            )
            chosen, out = "ref", ref()
    _last_impl[op] = chosen
    return out


def last_impl(op: str) -> str | None:
    """'triton' or 'ref' for the op's most recent call in this process, None before the first call."""
    return _last_impl.get(op)


def fallbacks() -> dict[str, str]:
    """Ops whose Triton path failed under impl='auto' and now use the reference, with the error."""
    return dict(_fallbacks)
