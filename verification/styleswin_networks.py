"""models/styleswin.py against Microsoft's official StyleSwin networks, weight for weight, on CPU.

    .venv/bin/python -m verification.styleswin_networks [--resolution 32] [--dtype float32|float64]

`official_styleswin(G, D, arch, resolution)` builds the official Generator and Discriminator
(microsoft/StyleSwin models/generator.py, models/discriminator.py, in `.scratch/official/`, never
copied into the project) with the hyper-parameters that `arch` names, and copies every parameter
and buffer of ours into them through an explicit name map (`generator_name_map`,
`discriminator_name_map`): each official tensor is either assigned exactly once, with its shape
checked, or is one of the constants both codes compute from the configuration (Haar and FIR
filters, relative position indices, the shift mask), which are listed and left alone. `check()`
then runs both on the same inputs and reports the largest differences (see `check`).

Importing the official code on CPU (`load_official`): its `op/` package compiles CUDA kernels with
torch.utils.cpp_extension.load at import, and it imports itself as the top-level packages `models`
and `op` - `models` is also the project's package. The official files are therefore executed under
the private package name `_official_styleswin` (their classes say so in __module__), with
`models`, `op` and `timm` aliased in sys.modules only while they run and restored afterwards;
`load` is replaced by a stub whose kernels raise if anything calls them, and the names the official
models imported (`upfirdn2d`, `fused_leaky_relu`) are pointed at the official pure-PyTorch
versions (`upfirdn2d_native`; leaky ReLU of x + bias times sqrt 2, the official CPU branch) on
every device. timm (only `to_2tuple` and `trunc_normal_`, used at construction) is stubbed with
torch's equivalents: every initialised tensor is overwritten by the copy anyway.

Smallest configuration both can build: the official channel tables are fixed (512 channels up to
32x32, 256 * multiplier * 64 / r above, the multiplier an integer), as are the window (8 beyond
`enable_full_resolution` = 8, the official default, whole-map attention at 4 and 8), two blocks per
stage and 32-channel heads (at least 4). The project's demo sizes (16-channel stages, window 4) have
no official counterpart, so the check builds ours at the official widths instead (OFFICIAL_ARCH:
512 channels at resolution 32, a 64-d latent and 2 mapping layers, which the official code leaves
free) - 4 stages of windowed attention including the shifted half with its mask at 16 and 32.

What the official training loop does with these networks (train_styleswin.py at the pinned commit),
for the loss- and step-level checks built on this module:
  - noise: `torch.randn((batch, 512)).cuda()`, drawn from the default (CPU) generator, twice per step
    (once for D's fakes, once for G's step); `generator(noise)` maps it (PixelNorm + n_mlp
    EqualLinear) to one w, repeats it over all 2 * stages latents (no style mixing: `inject_index`
    is overwritten with n_latent) and returns `(image, None)` (`(image, latent)` with
    return_latents). There are no per-layer noise inputs and no dropout (rates 0), so G consumes no
    random numbers of its own; its `truncation` branch is not used in training (and stacks the
    batch along dim 0 - it does not work for batches). G has no w_avg.
  - D forwards per step, in order, D always in train mode (so each forward is one power iteration
    of every spectral norm): D(fake), D(real), then with --bcr D(CR_DiffAug(fake)) and
    D(CR_DiffAug(real)) (the augmentations are drawn real first, then fake); backward, clip to
    norm 5, step; when step % d_reg_every == 0 (step 0 included) D(real) for R1, backward, step;
    then G's step: a fresh real batch is drawn (and not used), new noise, D(G(noise)) with D's
    requires_grad off, which still iterates the spectral norms. 3 D forwards per step, 5 with bCR,
    6 on R1 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models import IMAGENET
from models import styleswin as ss
from verification.official import commit_of, official_repo

REPO_NAME = "microsoft+StyleSwin"
PACKAGE = "_official_styleswin"  # the private name the official files are executed under

# The official channel tables: 512 up to 32x32, then 256 * m at 64, 128 * m at 128, ... (m an int)
OFFICIAL_CHANNEL_UNIT = 16384  # so channel_base = 16384 * m with channel_max 512
OFFICIAL_WINDOW = 8  # window beyond enable_full_resolution (8: whole-map attention at 4x4 and 8x8)

# Ours at the smallest official widths (see the module docstring); the latent size and the depth of
# the mapping network are free in the official code.
OFFICIAL_ARCH = dict(
    z_dim=64,
    w_dim=64,
    mapping_layers=2,
    mapping_lr_multiplier=0.01,
    window_size=OFFICIAL_WINDOW,
    window_layout="masked",
    blocks_per_stage=2,
    head_dim=32,
    min_heads=4,
    mlp_ratio=4.0,
    g_channel_base=OFFICIAL_CHANNEL_UNIT,
    d_channel_base=OFFICIAL_CHANNEL_UNIT,
    channel_max=512,
)

# ----------------------------------------------------------------------------------------------
# Importing the official code


class _NoExtension:
    """Stands in for the CUDA extension `load` would build: any kernel call is a loud error."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr: str):
        raise RuntimeError(f"official StyleSwin called its CUDA extension {self.name}.{attr}; the CPU route missed it")


def _stub_load(name: str, *args, **kwargs) -> _NoExtension:
    return _NoExtension(name)


def _timm_stub() -> dict[str, types.ModuleType]:
    """timm.models.layers with the two names the official generator imports."""
    layers = types.ModuleType("timm.models.layers")
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, list | tuple) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_  # same signature and distribution as timm's
    timm, timm_models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, timm_models.layers = timm_models, layers
    return {"timm": timm, "timm.models": timm_models, "timm.models.layers": layers}


@contextlib.contextmanager
def _aliased_modules(aliases: dict[str, types.ModuleType]) -> Iterator[None]:
    """sys.modules[name] = module for the duration; whatever was there (the project's `models`
    and its submodules included) is put back afterwards, and nothing else is touched."""
    shadowed = {name: sys.modules[name] for name in list(sys.modules) if name.split(".")[0] in _roots(aliases)}
    for name in shadowed:
        del sys.modules[name]
    sys.modules.update(aliases)
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] in _roots(aliases)]:
            del sys.modules[name]
        sys.modules.update(shadowed)


def _roots(aliases: dict[str, types.ModuleType]) -> set[str]:
    return {name.split(".")[0] for name in aliases}


def _package(name: str, path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    module.__package__ = name
    return module


def _exec_file(name: str, path, aliases: dict[str, types.ModuleType], alias: str) -> types.ModuleType:
    """Execute one official file as module `name` (registered for good) and as `alias` (only
    while loading, so that the official `from models.basic_layers import ...` finds it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    aliases[alias] = module
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def official_upfirdn2d(native: Callable) -> Callable:
    """The official upfirdn2d's CPU branch (same argument order) on every device."""

    def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
        return native(input, kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])

    return upfirdn2d


def official_fused_leaky_relu(input, bias, negative_slope=0.2, scale=2**0.5):
    """The official fused_leaky_relu's CPU branch on every device: leaky ReLU(x + bias) * scale."""
    rest = [1] * (input.ndim - bias.ndim - 1)
    return F.leaky_relu(input + bias.view(1, bias.shape[0], *rest), negative_slope=negative_slope) * scale


@functools.cache
def load_official() -> types.SimpleNamespace:
    """The official modules: .generator, .discriminator, .basic_layers, .op (and .commit), loaded
    once per process under PACKAGE without shadowing the project's packages (module docstring)."""
    root = official_repo(REPO_NAME)
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns that no CUDA runtime is found: none is needed
    try:
        import torch.utils.cpp_extension as cpp_extension
    finally:
        logger.setLevel(level)

    pkg = _package(PACKAGE, root)
    op_pkg, models_pkg = _package(f"{PACKAGE}.op", root / "op"), _package(f"{PACKAGE}.models", root / "models")
    for module in (pkg, op_pkg, models_pkg):
        sys.modules[module.__name__] = module
    aliases = {**_timm_stub(), "op": op_pkg, "models": models_pkg}
    real_load = cpp_extension.load
    cpp_extension.load = _stub_load  # op/*.py call it at import to compile CUDA code
    try:
        # the official op/fused_act.py uses torch.cuda.amp.custom_fwd, which warns that it is deprecated
        with _aliased_modules(aliases), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            fused_act = _exec_file(f"{PACKAGE}.op.fused_act", root / "op/fused_act.py", aliases, "op.fused_act")
            upfirdn = _exec_file(f"{PACKAGE}.op.upfirdn2d", root / "op/upfirdn2d.py", aliases, "op.upfirdn2d")
            # op/__init__.py only re-exports; its relative imports resolve to the modules above
            spec = importlib.util.spec_from_file_location(f"{PACKAGE}.op", root / "op/__init__.py")
            spec.loader.exec_module(op_pkg)
            loaded = {"fused_act": fused_act, "upfirdn2d_module": upfirdn, "op": op_pkg}
            for name in ("basic_layers", "generator", "discriminator"):
                loaded[name] = _exec_file(
                    f"{PACKAGE}.models.{name}", root / f"models/{name}.py", aliases, f"models.{name}"
                )
    finally:
        cpp_extension.load = real_load
    # Route the custom ops to pure PyTorch wherever the official code bound them by name.
    routes = {
        "upfirdn2d": official_upfirdn2d(upfirdn.upfirdn2d_native),
        "fused_leaky_relu": official_fused_leaky_relu,
    }
    for module in loaded.values():
        for name, route in routes.items():
            if hasattr(module, name):
                setattr(module, name, route)
    return types.SimpleNamespace(**loaded, commit=commit_of(REPO_NAME))


# ----------------------------------------------------------------------------------------------
# Configuration and the name maps


def official_multiplier(channel_base: int, channel_max: int, resolution: int, what: str) -> int:
    """The official channel_multiplier that gives our min(channel_max, channel_base / r) table, or a
    ValueError saying why there is none."""
    if channel_max != 512:
        raise ValueError(f"{what}: the official tables cap channels at 512, arch.channel_max is {channel_max}")
    if resolution <= 32:  # official widths are 512 throughout; ours too iff channel_base / 32 >= 512
        if channel_base < 32 * 512:
            raise ValueError(f"{what}: official widths are 512 up to 32x32; channel_base {channel_base} < 16384")
        return 2  # the official default; no width depends on it at this size
    multiplier, rest = divmod(channel_base, OFFICIAL_CHANNEL_UNIT)
    if rest or multiplier not in (1, 2):  # the official 256 * m at 64x64 is not capped at 512: m <= 2
        raise ValueError(f"{what}: channel_base {channel_base} is not 16384 or 32768 (official multiplier 1 or 2)")
    return multiplier


def official_hyperparameters(arch: dict, resolution: int) -> tuple[dict, dict]:
    """kwargs of the official Generator and Discriminator equivalent to our arch, or a ValueError
    naming the arch key that has no official counterpart."""
    fixed = dict(window_size=OFFICIAL_WINDOW, blocks_per_stage=2, head_dim=32, min_heads=4)
    for key, value in fixed.items():
        if arch[key] != value:
            raise ValueError(f"arch.{key} = {arch[key]}: the official StyleSwin fixes it at {value}")
    if arch["z_dim"] != arch["w_dim"]:
        raise ValueError("the official mapping takes z of size style_dim: arch.z_dim must equal arch.w_dim")
    generator = dict(
        size=resolution,
        style_dim=arch["w_dim"],
        n_mlp=arch["mapping_layers"],
        channel_multiplier=official_multiplier(arch["g_channel_base"], arch["channel_max"], resolution, "G"),
        lr_mlp=arch["mapping_lr_multiplier"],
        enable_full_resolution=OFFICIAL_WINDOW,
        mlp_ratio=arch["mlp_ratio"],
    )
    discriminator = dict(
        size=resolution,
        channel_multiplier=official_multiplier(arch["d_channel_base"], arch["channel_max"], resolution, "D"),
        sn=True,  # the official training commands pass --D_sn
    )
    return generator, discriminator


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


# official name -> (our name, function from our tensor to the official layout). The functions are
# reshapes/permutations, so the same map carries gradients across.
NameMap = dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]


def generator_name_map(G: ss.StyleSwinGenerator) -> NameMap:
    names: NameMap = {}
    for i in range(len(G.mapping.layers)):  # style.0 is PixelNorm
        for kind in ("weight", "bias"):
            names[f"style.{i + 1}.{kind}"] = (f"mapping.layers.{i}.{kind}", _same)
    syn = G.synthesis
    names["input.input"] = ("synthesis.const", lambda t: t.permute(2, 0, 1)[None])  # (H, W, C) -> (1, C, H, W)
    for s, blocks in enumerate(syn.stages):
        for b in range(len(blocks)):
            ours, theirs = f"synthesis.stages.{s}.{b}", f"layers.{s}.blocks.{b}"
            for o, t in [
                ("norm1.affine", "norm1.style"),
                ("norm2.affine", "norm2.style"),
                ("attn.qkv", "qkv"),
                ("attn.proj", "proj"),
                ("mlp.0", "mlp.fc1"),
                ("mlp.2", "mlp.fc2"),
            ]:
                for kind in ("weight", "bias"):
                    names[f"{theirs}.{t}.{kind}"] = (f"{ours}.{o}.{kind}", _same)
            for half in (0, 1):
                names[f"{theirs}.attn.{half}.relative_position_bias_table"] = (f"{ours}.attn.bias_tables.{half}", _same)
        if isinstance(syn.upsamples[s], ss.BilinearUpsample):
            ours, theirs = f"synthesis.upsamples.{s}", f"layers.{s}.upsample"
            names[f"{theirs}.norm.weight"] = (f"{ours}.norm.weight", _same)
            names[f"{theirs}.norm.bias"] = (f"{ours}.norm.bias", _same)
            names[f"{theirs}.reduction.weight"] = (f"{ours}.reduction.weight", _same)
            names[f"{theirs}.alpha"] = (f"{ours}.pos_scale", lambda t: t.reshape(1))
        ours = f"synthesis.to_rgbs.{s}"
        names[f"to_rgbs.{s}.conv.weight"] = (f"{ours}.proj.weight", lambda t: t[:, :, None, None])  # 1x1 conv
        names[f"to_rgbs.{s}.conv.bias"] = (f"{ours}.proj.bias", _same)
        names[f"to_rgbs.{s}.bias"] = (f"{ours}.bias", lambda t: t.view(1, -1, 1, 1))
    return names


def _spectral(names: NameMap, theirs: str, ours: str) -> None:
    """torch.nn.utils.spectral_norm's hook tensors <- the parametrization's (u and v included)."""
    names[f"{theirs}.weight_orig"] = (f"{ours}.parametrizations.weight.original", _same)
    names[f"{theirs}.weight_u"] = (f"{ours}.parametrizations.weight.0._u", _same)
    names[f"{theirs}.weight_v"] = (f"{ours}.parametrizations.weight.0._v", _same)


def _conv_layer(names: NameMap, theirs: str, ours: str, down: bool) -> None:
    """Official ConvLayer (Sequential: [Blur,] SN conv, FusedLeakyReLU) <- our SpectralConvLayer."""
    conv = 1 if down else 0
    _spectral(names, f"{theirs}.{conv}", f"{ours}.conv")
    names[f"{theirs}.{conv + 1}.bias"] = (f"{ours}.bias", _same)


def discriminator_name_map(D: ss.WaveletDiscriminator) -> NameMap:
    names: NameMap = {}
    for i in range(len(D.convs)):
        _conv_layer(names, f"from_rgbs.{i}.conv", f"from_rgbs.{i}.conv", down=False)
        _conv_layer(names, f"convs.{i}.conv1", f"convs.{i}.0", down=False)
        _conv_layer(names, f"convs.{i}.conv2", f"convs.{i}.1", down=True)
    _conv_layer(names, f"from_rgbs.{len(D.convs)}.conv", "from_rgb_4.conv", down=False)
    _conv_layer(names, "final_conv", "final_conv", down=False)
    _spectral(names, "final_linear.0", "fc")
    names["final_linear.0.bias"] = ("fc.bias", _same)
    names["final_linear.1.bias"] = ("fc_bias", _same)  # FusedLeakyReLU's bias, after the linear's own
    _spectral(names, "final_linear.2", "out")
    names["final_linear.2.bias"] = ("out.bias", _same)
    return names


# Official buffers that are constants of the configuration, computed by both codes (ours as
# non-persistent buffers or on the fly); matched by the last part of the name. check() compares
# what they compute, through the outputs.
CONSTANT_SUFFIXES = (
    "relative_position_index",  # WindowAttention (ours: rel_index)
    "attn_mask2",  # the shift mask, -100 where ours has -inf (shift_attention_mask)
    "sin_pos_embed._float_tensor",  # an uninitialised dtype/device marker of the positional embedding
    ".ll",  # Haar filters of HaarTransform / InverseHaarTransform (ours: haar_dwt, haar_idwt)
    ".lh",
    ".hl",
    ".hh",
    "kernel",  # [1,3,3,1] FIR of Upsample / Downsample / Blur (ours: setup_filter buffers `fir`)
)


@dataclass
class CopyReport:
    assigned: list[str] = field(default_factory=list)  # official names given our tensor
    official_constants: list[str] = field(default_factory=list)  # official buffers left as built
    ours_unused: list[str] = field(default_factory=list)  # our state_dict entries with no official tensor


@torch.no_grad()
def copy_weights(ours: nn.Module, official: nn.Module, names: NameMap) -> CopyReport:
    """Assign our tensors to the official ones through `names`; every official tensor of the
    state_dict (parameters and persistent buffers) must be mapped exactly once with the same shape,
    or be a known constant (CONSTANT_SUFFIXES)."""
    our_state = ours.state_dict(keep_vars=True)
    their_state = official.state_dict(keep_vars=True)
    report = CopyReport()
    unknown = [name for name in names if name not in their_state]
    if unknown:
        raise KeyError(f"name map lists tensors the official module does not have: {unknown}")
    used = [our_name for our_name, _ in names.values()]
    if len(set(used)) != len(used):
        raise KeyError(f"one of our tensors is mapped twice: {sorted(n for n in used if used.count(n) > 1)}")
    for their_name, target in their_state.items():
        if their_name not in names:
            if not their_name.endswith(CONSTANT_SUFFIXES):
                raise KeyError(f"official {their_name} {tuple(target.shape)} has no counterpart in ours")
            report.official_constants.append(their_name)
            continue
        our_name, to_official = names[their_name]
        value = to_official(our_state[our_name].detach())
        if value.shape != target.shape:
            raise ValueError(
                f"{their_name}: official shape {tuple(target.shape)}, ours ({our_name}) {tuple(value.shape)}"
            )
        target.copy_(value)
        report.assigned.append(their_name)
    report.ours_unused = sorted(set(our_state) - set(used))
    return report


def official_styleswin(our_G: nn.Module, our_D: nn.Module, arch: dict, resolution: int) -> tuple[nn.Module, nn.Module]:
    """The official (Generator, Discriminator) with our weights, in our networks' mode (train/eval)
    and dtype, on CPU. Their `copy_report` attribute lists what was assigned, the official constants
    left as built and our entries without official tensor (G: mapping.w_avg)."""
    official = load_official()
    g_kwargs, d_kwargs = official_hyperparameters(arch, resolution)
    with warnings.catch_warnings():  # the official torch.meshgrid calls predate its indexing argument
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        off_G = official.generator.Generator(**g_kwargs)
    off_D = official.discriminator.Discriminator(**d_kwargs)
    dtype = next(our_G.parameters()).dtype
    for ours, theirs, names in (
        (our_G, off_G, generator_name_map(our_G)),
        (our_D, off_D, discriminator_name_map(our_D)),
    ):
        theirs.to(dtype)
        theirs.copy_report = copy_weights(ours, theirs, names)
        theirs.train(ours.training)
    return off_G, off_D


# ----------------------------------------------------------------------------------------------
# The check


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """max |ours - theirs| and that over max |theirs| (the official values set the scale)."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {tuple(ours.shape)}, official {tuple(theirs.shape)}")
    abs_diff, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    return {"max_abs": abs_diff, "max_rel": abs_diff / max(scale, 1e-30), "scale": scale}


def _worst(diffs: list[dict[str, float]]) -> dict[str, float]:
    return {key: max(d[key] for d in diffs) for key in ("max_abs", "max_rel")}


# A parameter whose gradient is almost zero next to the others of the same backward (the biases
# under R1 reach ||dD/dx||^2 only through the minibatch stddev and the leaky ReLUs' kinks) holds
# float32 rounding noise; its difference is measured against this fraction of the largest gradient.
GRAD_FLOOR = 1e-3


def _worst_grads(diffs: dict[str, dict[str, float]]) -> dict[str, float]:
    """The worst per-tensor difference over a backward's parameter gradients, each relative to its
    own largest value but at least GRAD_FLOOR times the largest gradient of them all."""
    floor = GRAD_FLOOR * max(d["scale"] for d in diffs.values())
    return {
        "max_abs": max(d["max_abs"] for d in diffs.values()),
        "max_rel": max(d["max_abs"] / max(d["scale"], floor, 1e-30) for d in diffs.values()),
    }


def grad_differences(ours: nn.Module, theirs: nn.Module, names: NameMap) -> dict[str, dict[str, float]]:
    """Per official parameter: our .grad (mapped to the official layout) against theirs. A missing
    .grad (a parameter the loss does not reach, e.g. the last bias under R1) counts as zeros."""

    def grad(p: nn.Parameter) -> torch.Tensor:
        return torch.zeros_like(p) if p.grad is None else p.grad

    our_params = dict(ours.named_parameters())
    out = {}
    for their_name, p in theirs.named_parameters():
        our_name, to_official = names[their_name]
        out[their_name] = difference(to_official(grad(our_params[our_name])), grad(p))
    return out


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Move every parameter off its initial value (zero biases, unit norms, alpha = 0) so that no
    path of the network is multiplied away in the comparison: noise of half a tensor's own spread
    (0.05 for the constant-initialised ones, 0.5 for the positional-encoding scales)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            spread = p.std().item() if p.numel() > 1 else 0.0
            scale = 0.5 if name.endswith("pos_scale") else (0.5 * spread if spread > 0 else 0.05)
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


@torch.no_grad()
def exact_haar_filters(off_D: nn.Module) -> None:
    """The official Haar filters are products of float32 1/sqrt(2)s: +-0.49999997, not +-0.5 (a
    float32 rounding of the same transform, 6e-8 relative). In float64 checks they are set to
    +-0.5, so that the rounding of the official float32 constants does not hide the function."""
    for name, buffer in off_D.named_buffers():
        if name.endswith((".ll", ".lh", ".hl", ".hh")):
            buffer.copy_(buffer.sign() * 0.5)


# (check, what it measures): values (forward outputs, state) and gradients, which sum over the
# batch and every pixel and so carry more float32 rounding. "mapping" marks the checks that go
# through our mapping network, which runs in float32 whatever the input dtype (models/layers.py
# MappingNetwork), so that float64 checks through it only reach float32 agreement.
TOLERANCE = {  # dtype -> (values, gradients)
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-10, 1e-10),
}
THROUGH_MAPPING_FLOAT64 = (1e-5, 1e-4)


@dataclass
class Result:
    diff: dict[str, float]
    gradient: bool = False
    mapping: bool = False

    def tolerance(self, dtype: torch.dtype) -> float:
        values, grads = THROUGH_MAPPING_FLOAT64 if self.mapping and dtype == torch.float64 else TOLERANCE[dtype]
        return grads if self.gradient else values

    def ok(self, dtype: torch.dtype) -> bool:
        return self.diff["max_rel"] <= self.tolerance(dtype)


def check(resolution: int = 32, batch: int = 4, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, Result]:
    """Ours (OFFICIAL_ARCH at `resolution`, every parameter moved off its initial value) against the
    official networks with the same weights, in `dtype` on CPU:
      - mapping ws (the official style network's w, repeated over the latents);
      - synthesis from a distinct w per block (which block reads which latent), ours through
        IMAGENET.from_unit against the official raw image, and the gradients of a scalar of it wrt
        the ws and every synthesis parameter;
      - G(z), same conversion, with window_layout masked and split, and the gradients of a scalar of
        G(z) wrt every G parameter;
      - D logits over three train-mode forwards (one power iteration each) on the same
        official-space images, and every spectral norm's u and v after them;
      - gradients of softplus(D(x)).mean() wrt x and every D parameter (a fourth forward);
      - R1: the gradient of ||dD/dx||^2 wrt every D parameter (a fifth forward, double backward).
    "(all)" rows are the worst parameter, each gradient relative to its own scale (at least
    GRAD_FLOOR of the backward's largest). float64 sets the official Haar filters to their exact
    values (exact_haar_filters). Returns {check: Result}; prints a table."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    G, D = models.build("styleswin", OFFICIAL_ARCH, resolution)
    randomise(G, gen)
    randomise(D, gen)
    G, D = G.to(dtype).train(), D.to(dtype).train()
    off_G, off_D = official_styleswin(G, D, OFFICIAL_ARCH, resolution)
    if dtype == torch.float64:
        exact_haar_filters(off_D)
    g_names, d_names = generator_name_map(G), discriminator_name_map(D)
    results: dict[str, Result] = {}

    z = torch.randn(batch, G.z_dim, generator=gen, dtype=dtype)
    ws = G.mapping(z).to(dtype)
    results["mapping ws"] = Result(difference(ws, off_G.style(z)[:, None].expand_as(ws)), mapping=True)

    # synthesis: the official forward maps its input with `style`, bypassed here so that it takes
    # the (N, n_latent, w_dim) ws as they are
    ws_ours = (ws + 0.5 * torch.randn(ws.shape, generator=gen, dtype=dtype)).detach().requires_grad_(True)
    ws_theirs = ws_ours.detach().clone().requires_grad_(True)
    direction = torch.randn(batch, 3, resolution, resolution, generator=gen, dtype=dtype)
    ours_raw = IMAGENET.from_unit(G.synthesis(ws_ours))
    style, off_G.style = off_G.style, nn.Identity()
    try:
        theirs_raw, _ = off_G(ws_theirs)
    finally:
        off_G.style = style
    results["synthesis (per-block ws)"] = Result(difference(ours_raw, theirs_raw))
    (ours_raw * direction).sum().backward()
    (theirs_raw * direction).sum().backward()
    results["synthesis grad wrt ws"] = Result(difference(ws_ours.grad, ws_theirs.grad), gradient=True)
    synthesis_grads = grad_differences(G, off_G, g_names)
    results["synthesis param grads (all)"] = Result(
        _worst_grads({name: d for name, d in synthesis_grads.items() if not name.startswith("style.")}),
        gradient=True,
    )

    G.zero_grad(set_to_none=True)
    off_G.zero_grad(set_to_none=True)
    ours_img = IMAGENET.from_unit(G(z))
    theirs_img, _ = off_G(z)
    results["G(z)"] = Result(difference(ours_img, theirs_img), mapping=True)
    (ours_img * direction).sum().backward()
    (theirs_img * direction).sum().backward()
    results["G(z) param grads (all)"] = Result(
        _worst_grads(grad_differences(G, off_G, g_names)), gradient=True, mapping=True
    )
    G_split, _ = models.build("styleswin", {**OFFICIAL_ARCH, "window_layout": "split"}, resolution)
    G_split.to(dtype).load_state_dict(G.state_dict())
    with torch.no_grad():
        split_img = IMAGENET.from_unit(G_split(z))
    results["G(z), window_layout=split"] = Result(difference(split_img, theirs_img), mapping=True)

    # D in train mode: every forward is one power-iteration step of every spectral norm
    x = torch.randn(batch, 3, resolution, resolution, generator=gen, dtype=dtype)
    logits = [difference(D(x).flatten(), off_D(x).flatten()) for _ in range(3)]
    results["D logits (3 train forwards)"] = Result(_worst(logits))
    our_state, their_state = D.state_dict(), off_D.state_dict()
    results["D spectral u, v after them"] = Result(
        _worst(
            [
                difference(to_official(our_state[our_name]), their_state[their_name])
                for their_name, (our_name, to_official) in d_names.items()
                if their_name.endswith(("weight_u", "weight_v"))
            ]
        )
    )

    x_ours, x_theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    F.softplus(D(x_ours)).mean().backward()
    F.softplus(off_D(x_theirs).flatten()).mean().backward()
    results["D grad wrt input"] = Result(difference(x_ours.grad, x_theirs.grad), gradient=True)
    d_grads = grad_differences(D, off_D, d_names)
    for name in ("from_rgbs.0.conv.0.weight_orig", "final_linear.0.bias", "final_linear.1.bias"):
        results[f"D grad {name}"] = Result(d_grads[name], gradient=True)
    results["D param grads (all)"] = Result(_worst_grads(d_grads), gradient=True)

    D.zero_grad(set_to_none=True)
    off_D.zero_grad(set_to_none=True)
    for net, images in ((D, x_ours), (off_D, x_theirs)):
        (grad,) = torch.autograd.grad(net(images).sum(), images, create_graph=True)
        grad.square().sum().backward()
    results["R1 param grads (all)"] = Result(_worst_grads(grad_differences(D, off_D, d_names)), gradient=True)

    print(f"models/styleswin.py vs microsoft/StyleSwin {load_official().commit[:12]}, {resolution}px, {dtype}, CPU")
    for tag, net in (("G", off_G), ("D", off_D)):
        report = net.copy_report
        print(
            f"  {tag}: {len(report.assigned)} official tensors assigned once each; "
            f"{len(report.official_constants)} official constant buffers left as built; "
            f"ours without official tensor: {report.ours_unused or 'none'}"
        )
    for name, result in results.items():
        diff = result.diff
        verdict = "ok" if result.ok(dtype) else "ABOVE"
        print(
            f"  {name:<36} max abs {diff['max_abs']:.2e}  max rel {diff['max_rel']:.2e}"
            f"  ({verdict} {result.tolerance(dtype):g})"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    results = check(args.resolution, args.batch, dtype, args.seed)
    failed = [name for name, result in results.items() if not result.ok(dtype)]
    print(
        f"{len(results) - len(failed)}/{len(results)} checks within tolerance"
        + (f"; above: {failed}" if failed else "")
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
