"""Read a pickle a user brings (a published NVlabs / R3GAN network pickle) without running its code.

`pickle.load` calls whatever the file names: NVlabs' `legacy.load_network_pkl` unpickles arbitrary
objects and `torch_utils.persistence` executes the Python source embedded in the file. Here every
global the stream asks for goes through an allow-list:

  tensors        torch._utils._rebuild_tensor_v2 / _rebuild_parameter, torch._tensor._rebuild_from_type_v2
                 (of a tensor or parameter only); the storage bytes torch.storage._load_from_bytes
                 would read with torch.load(weights_only=False) are read with weights_only=True
  containers     collections.OrderedDict; dnnlib.util.EasyDict (read as a plain dict)
  numpy arrays   numpy's _reconstruct, ndarray, dtype and scalar (data, no code)
  NVlabs records torch_utils.persistence._reconstruct_persistent_obj: read as a `PersistentRecord`
                 (class name, version, the source text, the object's state), never executed

Any other global stops the read with one line naming the file and the refused name (`RefusedPickle`,
a UserError: exit status 2 at a stage boundary).
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegan.errors import UserError


class RefusedPickle(UserError):
    """A pickle asked for a global outside the allow-list."""


@dataclass(frozen=True)
class PersistentRecord:
    """One object NVlabs' persistence saved: what its class is called and the state it had, as data. The
    embedded source (`module_src`) is kept as text for inspection and never run."""

    class_name: str
    version: int
    module_src: str
    state: dict

    @classmethod
    def from_meta(cls, meta: dict) -> PersistentRecord:
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise pickle.UnpicklingError("a persistence record that is not a class instance")
        return cls(
            class_name=str(meta.get("class_name", "")),
            version=int(meta.get("version", 0)),
            module_src=str(meta.get("module_src", "")),
            state=dict(meta.get("state") or {}),
        )


def _storage_from_bytes(data: bytes):
    """torch.storage._load_from_bytes, without its weights_only=False."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 for the only types a weights file needs."""
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter) or new_type not in (
        torch.Tensor,
        torch.nn.Parameter,
    ):
        raise pickle.UnpicklingError(f"a tensor of type {new_type!r} rebuilt by {func!r}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _allowed() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord.from_meta,
        ("dnnlib.util", "EasyDict"): dict,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickles of numpy 1 and 2
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


ALLOWED = _allowed()


class AllowListUnpickler(pickle.Unpickler):
    def __init__(self, handle, source: str):
        super().__init__(handle)
        self.source = source

    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise RefusedPickle(
                f"{self.source} asks for {module}.{name}, which a weights file does not need: refusing to load it "
                "(no code from the file ran); export the weights as a state dict or use an official pickle"
            )
        return found

    def persistent_load(self, pid):
        raise RefusedPickle(f"{self.source} holds a persistent id ({type(pid).__name__}): not a plain pickle")


def load(path: str | Path) -> Any:
    """The objects of a pickle file, through the allow-list; NVlabs' persistent objects as PersistentRecord."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return AllowListUnpickler(handle, str(path)).load()
    except RefusedPickle:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError) as err:
        raise UserError(f"{path} is not a readable network pickle ({type(err).__name__}: {err})"[:300]) from err
