"""Registry of the study's GANs: one module per model, each registering a ModelSpec by name.

Contract every model follows (the training loop, metrics and report rely on it):

Generator `G` (nn.Module)
  - attributes `z_dim`, `img_resolution`, `img_channels`
  - `G(z, truncation_psi=1.0) -> images` (N, C, R, R), roughly in [-1, 1]
  - style-based generators also have `G.mapping(z, truncation_psi=1.0, update_emas=False) -> ws`
    (N, num_ws, w_dim), `G.synthesis(ws, update_emas=False) -> images`, a buffer `G.w_avg`,
    `G.w_dim` and `G.num_ws`; `update_emas=True` updates the running statistics the networks keep
    (w_avg, StyleGAN3's magnitude EMAs), which the training loop asks for once per step, in the
    pass that makes D's fakes, as the official code does. G itself never mixes styles: style
    mixing is the training loop's (facegan/training/phases.py), as in the official loss. A
    growing style-based G also has `num_active_ws`, the ws its current level reads
Discriminator `D` (nn.Module)
  - `D(images) -> logits` (N,) or (N, 1)
Progressive models (PGGAN, StyleGAN) also give both G and D `set_progress(level, alpha)`:
  level 0 is 4x4, level k is 4*2**k, alpha in [0, 1] fades in the newest block.

`build(arch, resolution)` receives the model's `arch` section of params.yaml as keyword
arguments; constructors take explicit, documented hyper-parameters, never globals.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from facegan.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    paper: str
    build: Callable[..., tuple[nn.Module, nn.Module]]  # build(resolution=..., **arch) -> (G, D)
    style_based: bool = False  # has mapping/synthesis and w_avg (PPL in W, truncation sweeps)
    progressive: bool = False  # has set_progress(level, alpha) on G and D


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec `models/<name>.py` registers (imported on first use)."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"models.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"models.{name}":
                raise
            raise UserError(
                f"model '{name}' has no module models/{name}.py: add it, or remove models.{name} from params.yaml"
            ) from err
        if name not in _REGISTRY:
            raise UserError(f"models/{name}.py registers no ModelSpec named '{name}': call models.register")
    return _REGISTRY[name]


def build(name: str, arch: dict, resolution: int) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) for `name` at `resolution`; a bad arch key is a one-line UserError."""
    spec = get_spec(name)
    try:
        return spec.build(resolution=resolution, **arch)
    except TypeError as err:
        raise UserError(f"models.{name}.arch does not fit {name}: {err}") from err


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def from_snapshot(name: str, arch: dict, resolution: int, state: dict) -> nn.Module:
    """G_ema of a checkpoint/snapshot, in eval mode; a progressive snapshot keeps its level and alpha."""
    G, _ = build(name, arch, resolution)
    G.load_state_dict(state["G_ema"])
    if "level" in state and hasattr(G, "set_progress"):
        G.set_progress(int(state["level"]), float(state.get("alpha", 1.0)))
    return G.eval().requires_grad_(False)
