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
Data space: G's images leave the model in [-1, 1] (what every consumer reads). A model whose official
code trains in another range (StyleSwin: ImageNet-normalised reals) names it in `ModelSpec.data_space`;
its synthesis network ends with `data_space.to_unit`, and the training loss moves reals and fakes into
that space (`from_unit`) before D sees them, so that D, R1 and augmentations work in the official units.

A model's `build(resolution, arch)` receives its `arch` section of params.yaml as the typed class that
facegan.settings declares for it (the one place its keys are listed); constructors take explicit,
documented hyper-parameters, never globals.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from pydantic import ValidationError

from facegan import settings
from facegan.errors import UserError
from facegan.problems import Problem, one_line


@dataclass(frozen=True)
class DataSpace:
    """A per-channel affine map between the study's images in [-1, 1] and a model's training space:
    model = ((unit + 1) / 2 - mean) / std, as torchvision's Normalize applies it to images in [0, 1]."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _view(self, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    @property
    def is_unit(self) -> bool:
        return self.mean == (0.5,) * len(self.mean) and self.std == (0.5,) * len(self.std)

    def from_unit(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_unit:
            return images
        return ((images + 1) * 0.5 - self._view(self.mean, images)) / self._view(self.std, images)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_unit:
            return images
        return (images * self._view(self.std, images) + self._view(self.mean, images)) * 2 - 1


UNIT = DataSpace("unit", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1] itself: both maps return their input
IMAGENET = DataSpace("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet Normalize


@dataclass(frozen=True)
class ModelSpec:
    name: str
    paper: str
    build: Callable[..., tuple[nn.Module, nn.Module]]  # build(resolution=..., **arch) -> (G, D)
    style_based: bool = False  # has mapping/synthesis and w_avg (PPL in W, truncation sweeps)
    progressive: bool = False  # has set_progress(level, alpha) on G and D
    data_space: DataSpace = UNIT  # the range the official code trains D in (see the module docstring)
    official_precision: str = "fp32"  # fp32 | fp16 | bf16 (low precision in the blocks the model marks, as its code)


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


def arch_settings(name: str, arch) -> settings.Section:
    """`models.<name>.arch` as its settings class: a mapping of the same keys (benchmarks, tests, the
    verification scripts) is checked by the same rules as params.yaml, with a one-line error."""
    cls = settings.model_settings_class(name).model_fields["arch"].annotation
    if isinstance(arch, cls):
        return arch
    try:
        return cls.model_validate(dict(arch))
    except ValidationError as err:
        raise UserError(one_line(err, lambda problem: arch_problem(name, cls, problem))) from None


def arch_problem(name: str, cls: type[settings.Section], problem: Problem) -> str:
    """An arch mapping's problem as one line, its key named as params.yaml would hold it."""
    key = f"models.{name}.arch.{problem.key}"
    if problem.kind in ("missing", "unknown"):
        return f"{key}: {problem.message.lower()} (the keys are facegan.settings' {cls.__name__})"
    why = f"must be {problem.must}" if problem.kind == "rule" else problem.message
    return f"{key} = {problem.input!r} is invalid: {why}"


def build(name: str, arch, resolution: int) -> tuple[nn.Module, nn.Module]:
    """Build (G, D) for `name` at `resolution` from `models.<name>.arch` (its settings class, or a mapping of
    the same keys)."""
    return get_spec(name).build(resolution, arch_settings(name, arch))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def from_snapshot(name: str, arch, resolution: int, state: dict) -> nn.Module:
    """G_ema of a checkpoint/snapshot, in eval mode; a progressive snapshot keeps its level and alpha."""
    G, _ = build(name, arch, resolution)
    G.load_state_dict(state["G_ema"])
    if "level" in state and hasattr(G, "set_progress"):
        G.set_progress(int(state["level"]), float(state.get("alpha", 1.0)))
    return G.eval().requires_grad_(False)
