"""Our StyleGAN2 and StyleGAN3 (configs T and R) networks against NVlabs' official ones, on CPU.

    python -m verification.nvlabs_networks          # exit status 1 when a check differs

`official_stylegan2` / `official_stylegan3` build the official networks (NVlabs/stylegan3,
training/networks_stylegan2.py and networks_stylegan3.py; verification/README.md says where they
come from) with the hyper-parameters `train.py` would give them for our `arch` section, and copy
every parameter and buffer of ours into them through an explicit name map: each official tensor is
assigned exactly once, shapes agree up to a reshape of equal size, and nothing of ours is left
over. The official code runs on CPU through its reference ops (bias_act, upfirdn2d,
filtered_lrelu), so the comparison is of the two implementations in fp32 without any fused kernel.

Filters and other constants both sides compute for themselves (FIR filters, StyleGAN3's Kaiser and
jinc filters, the input transform) are compared before ours overwrite theirs, so the filter
design is checked too rather than copied over. Official buffers with no counterpart of ours
are constants the official forward never reads (the [1,3,3,1] filter every official conv layer
registers, resampling or not); they are kept and listed.

`build_official_*` construct the official networks alone, in the order models.build constructs
ours: the same torch seed then gives the same initial tensors (checked), up to rounding (official
StyleGAN2 divides its mapping weights by lr_multiplier where we multiply by its reciprocal, as
official StyleGAN3 does; our jinc filters use torch's Bessel function where it uses scipy's).

`check()` builds tiny networks (16 and 32 px, at most 32 channels, z/w 32, 2 mapping layers) with
every parameter moved off its initial value (zero biases, noise strengths and the Fourier affine
would otherwise hide whole terms), copies them, and compares the mapping (with and without
truncation), synthesis with constant and with random noise under the same torch seed (the same
draws in the same order and shapes), G end to end, the running statistics of update_emas (w_avg,
StyleGAN3's magnitude EMAs), D's logits, first-order gradients of a scalar loss with respect to the
inputs and every parameter, and second-order ones: R1's ||dD/dx||^2 and the path-length term
||d(img . y)/dws|| differentiated with respect to the parameters. Each row prints the largest
absolute difference and that difference relative to the largest magnitude of the official result.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from facegan.errors import UserError
from facegan.params import deep_merge, read_yaml
from verification.official import REPO_ROOT, commit_of, import_nvlabs

REPO = "NVlabs+stylegan3"
REL_TOLERANCE = 1e-5  # beyond float32 rounding through a few dozen layers: a real difference
# A parameter gradient is a sum over batch and pixels (10^4-10^5 fp32 terms for a noise strength or
# a bias) that mostly cancel, so its rounding error relative to its size is larger: our own fused
# and non-fused StyleGAN2 forms, the same function, differ by up to ~1e-5 there (the 'floor' rows).
# A wrong term (a flipped kernel, a missing gain, other noise) shows as rel > 1e-2.
GRAD_REL_TOLERANCE = 1e-4

# Buffers both sides design for themselves from the hyper-parameters: compared, then overwritten.
DESIGNED_BUFFERS = ("resample_filter", "up_filter", "down_filter", "transform")


def official_modules():
    """(networks_stylegan2, networks_stylegan3) of NVlabs' stylegan3 repository."""
    return import_nvlabs(REPO, "training.networks_stylegan2", "training.networks_stylegan3")


# ----------------------------------------------------------------------------------------------
# Name maps: (official name, our name or None) for every tensor of the official state_dict


def _mapping_names(num_layers: int) -> list[tuple[str, str]]:
    names = [("mapping.w_avg", "mapping.w_avg")]
    for i in range(num_layers):
        names += [(f"mapping.fc{i}.{p}", f"mapping.layers.{i}.{p}") for p in ("weight", "bias")]
    return names


def _affine(official: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{official}.affine.{p}", f"{ours}.affine.{p}") for p in ("weight", "bias")]


def stylegan2_generator_names(off_G: nn.Module) -> list[tuple[str, str | None]]:
    """Official G (networks_stylegan2.Generator, architecture 'skip') -> ours (models/stylegan2.py)."""
    names = _mapping_names(off_G.mapping.num_layers)
    for k, res in enumerate(off_G.synthesis.block_resolutions):
        ob, ub = f"synthesis.b{res}", f"synthesis.blocks.{k}"
        names.append((f"{ob}.resample_filter", f"{ub}.resample_filter"))
        if res == 4:
            names.append((f"{ob}.const", f"{ub}.const"))
        for conv in ("conv1",) if res == 4 else ("conv0", "conv1"):
            oc, uc = f"{ob}.{conv}", f"{ub}.{conv}"
            names += _affine(oc, f"{uc}.conv")
            names += [
                (f"{oc}.weight", f"{uc}.conv.weight"),
                (f"{oc}.bias", f"{uc}.bias"),
                (f"{oc}.noise_const", f"{uc}.noise.noise_const"),
                (f"{oc}.noise_strength", f"{uc}.noise.strength"),  # official: a scalar; ours: shape [1]
                # every official SynthesisLayer registers the filter; only the up-sampling one reads it
                (f"{oc}.resample_filter", f"{uc}.conv.resample_filter" if conv == "conv0" else None),
            ]
        names += _affine(f"{ob}.torgb", f"{ub}.torgb.conv")
        names += [(f"{ob}.torgb.weight", f"{ub}.torgb.conv.weight"), (f"{ob}.torgb.bias", f"{ub}.torgb.bias")]
    return names


def stylegan3_generator_names(off_G: nn.Module) -> list[tuple[str, str | None]]:
    """Official G (networks_stylegan3.Generator) -> ours (models/stylegan3.py)."""
    names = _mapping_names(off_G.mapping.num_layers)
    inp = "synthesis.input"
    names += _affine(inp, inp)
    names += [(f"{inp}.{b}", f"{inp}.{b}") for b in ("weight", "transform", "freqs", "phases")]
    state = off_G.state_dict()
    for idx, name in enumerate(off_G.synthesis.layer_names):
        ol, ul = f"synthesis.{name}", f"synthesis.layer_list.{idx}"
        names += _affine(ol, ul)
        names += [(f"{ol}.{p}", f"{ul}.{p}") for p in ("weight", "bias", "magnitude_ema")]
        # 1-tap filters are None on both sides (not in the state); a filter only one side has fails the copy
        names += [(f"{ol}.{f}", f"{ul}.{f}") for f in ("up_filter", "down_filter") if f"{ol}.{f}" in state]
    return names


def discriminator_names(off_D: nn.Module) -> list[tuple[str, str | None]]:
    """Official D (networks_stylegan2.Discriminator, 'resnet') -> ours (layers.ResidualDiscriminator)."""
    names = []
    for k, res in enumerate(off_D.block_resolutions):
        ob, ub = f"b{res}", f"blocks.{k}"
        names.append((f"{ob}.resample_filter", None))  # read by the 'skip' architecture only
        convs = ("fromrgb", "conv0", "conv1", "skip") if k == 0 else ("conv0", "conv1", "skip")
        for conv in convs:
            names.append((f"{ob}.{conv}.weight", f"{ub}.{conv}.weight"))
            if conv != "skip":
                names.append((f"{ob}.{conv}.bias", f"{ub}.{conv}.bias"))
            resamples = conv in ("conv1", "skip")  # the official filter of a 1:1 conv is never read
            names.append((f"{ob}.{conv}.resample_filter", f"{ub}.{conv}.resample_filter" if resamples else None))
    for layer in ("conv", "fc", "out"):
        names += [(f"b4.{layer}.{p}", f"epilogue.{layer}.{p}") for p in ("weight", "bias")]
    names.append(("b4.conv.resample_filter", None))
    return names


# ----------------------------------------------------------------------------------------------
# Copying


@dataclass
class CopyReport:
    """What a copy did: the name map, official tensors left as constructed (constants the official
    forward never reads), and for designed buffers the largest difference before the copy."""

    pairs: list[tuple[str, str | None]]
    official_only: list[str] = field(default_factory=list)
    designed_diff: dict[str, float] = field(default_factory=dict)


def copy_state(ours: nn.Module, theirs: nn.Module, pairs: list[tuple[str, str | None]]) -> CopyReport:
    """Copy ours into theirs along `pairs`; every official tensor (parameter or buffer) must be
    named exactly once, sizes must agree, and every tensor of ours must be used."""
    off_state = theirs.state_dict(keep_vars=True)
    our_state = ours.state_dict(keep_vars=True)
    report = CopyReport(pairs)
    counts = Counter(off for off, _ in pairs)
    twice = [name for name, n in counts.items() if n > 1]
    unknown = sorted(set(counts) - set(off_state))
    missing = sorted(set(off_state) - set(counts))
    if twice or unknown or missing:
        raise AssertionError(f"name map: assigned twice {twice}, not official {unknown}, unassigned {missing}")
    used = Counter()
    with torch.no_grad():
        for off_name, our_name in pairs:
            dst = off_state[off_name]
            if our_name is None:
                report.official_only.append(off_name)
                continue
            if our_name not in our_state:
                raise AssertionError(f"{off_name}: ours has no {our_name}")
            src = our_state[our_name]
            if src.numel() != dst.numel():
                raise AssertionError(f"{off_name} {tuple(dst.shape)} <- {our_name} {tuple(src.shape)}: sizes differ")
            if off_name.rsplit(".", 1)[-1] in DESIGNED_BUFFERS:
                report.designed_diff[off_name] = (dst - src.reshape(dst.shape)).abs().max().item()
            dst.copy_(src.detach().reshape(dst.shape))
            used[our_name] += 1
    unused = sorted(set(our_state) - set(used))
    reused = [name for name, n in used.items() if n > 1]
    if unused or reused:
        raise AssertionError(f"name map: ours unused {unused}, used twice {reused}")
    return report


def _clamp(arch: dict) -> int | None:
    return arch["conv_clamp"] if arch["conv_clamp"] > 0 else None  # 0 = off, as models/*.build reads it


def build_official_stylegan2(arch: dict, resolution: int, img_channels: int = 3):
    """(off_G, off_D) freshly initialised: the official StyleGAN2 networks for
    models.stylegan2.arch as train.py --cfg=stylegan2 builds them (skip G, resnet D,
    fused_modconv 'inference_only'). Constructed in our order (G's synthesis, G's mapping, D), so
    the same torch seed gives the same initial weights as models.build."""
    sg2, _ = official_modules()
    common = dict(
        c_dim=0,
        img_resolution=resolution,
        img_channels=img_channels,
        channel_base=arch["channel_base"],
        channel_max=arch["channel_max"],
        num_fp16_res=arch["num_fp16_res"],
        conv_clamp=_clamp(arch),
    )
    off_G = sg2.Generator(
        z_dim=arch["z_dim"],
        w_dim=arch["w_dim"],
        mapping_kwargs=dict(num_layers=arch["mapping_layers"], lr_multiplier=arch["mapping_lr_multiplier"]),
        fused_modconv_default="inference_only",
        **common,
    )
    off_D = sg2.Discriminator(epilogue_kwargs=dict(mbstd_group_size=arch["mbstd_group_size"]), **common)
    return off_G, off_D


def build_official_stylegan3(arch: dict, resolution: int, img_channels: int = 3):
    """(off_G, off_D) freshly initialised: the official StyleGAN3 generator of config
    arch['config'] as train.py --cfg=stylegan3-t / -r builds it (config r doubles G's channel_base
    and channel_max, 1x1 convs, radial filters) and the StyleGAN2 discriminator with the undoubled
    widths. The cut-off schedule constants (first cut-off, stop-bands, filter size, lrelu
    up-sampling) are left at the official defaults, which tests ours."""
    sg2, sg3 = official_modules()
    r = arch["config"] == "r"
    common = dict(c_dim=0, img_resolution=resolution, img_channels=img_channels)
    off_G = sg3.Generator(
        z_dim=arch["z_dim"],
        w_dim=arch["w_dim"],
        mapping_kwargs=dict(num_layers=arch["mapping_layers"], lr_multiplier=arch["mapping_lr_multiplier"]),
        channel_base=arch["channel_base"] * (2 if r else 1),
        channel_max=arch["channel_max"] * (2 if r else 1),
        num_layers=arch["num_layers"],
        num_critical=arch["num_critical"],
        margin_size=arch["margin"],
        output_scale=arch["output_scale"],
        num_fp16_res=arch["num_fp16_res"],
        conv_kernel=1 if r else 3,
        use_radial_filters=r,
        conv_clamp=_clamp(arch),
        magnitude_ema_beta=arch["magnitude_ema_beta"],
        **common,
    )
    off_D = sg2.Discriminator(
        channel_base=arch["channel_base"],
        channel_max=arch["channel_max"],
        num_fp16_res=arch["num_fp16_res"],
        conv_clamp=_clamp(arch),
        epilogue_kwargs=dict(mbstd_group_size=arch["mbstd_group_size"]),
        **common,
    )
    return off_G, off_D


def build_official(model: str, arch: dict, resolution: int, img_channels: int = 3):
    """build_official_stylegan2 or build_official_stylegan3 by the model's registry name."""
    build = {"stylegan2": build_official_stylegan2, "stylegan3": build_official_stylegan3}[model]
    return build(arch, resolution, img_channels)


def name_maps(model: str, off_G, off_D) -> tuple[list, list]:
    """(G's name map, D's name map) for official networks of `model`."""
    g_names = {"stylegan2": stylegan2_generator_names, "stylegan3": stylegan3_generator_names}[model](off_G)
    return g_names, discriminator_names(off_D)


def copy_into_official(model: str, our_G, our_D, off_G, off_D) -> dict[str, CopyReport]:
    """Check the settings a state copy cannot see, copy ours into the official networks and set
    their train/eval mode to ours (it matters: StyleGAN2's fused_modconv 'inference_only');
    returns {'G': CopyReport, 'D': CopyReport}."""
    {"stylegan2": _check_stylegan2_structure, "stylegan3": _check_stylegan3_structure}[model](our_G, off_G)
    _check_discriminator_structure(our_D, off_D)
    g_names, d_names = name_maps(model, off_G, off_D)
    reports = {"G": copy_state(our_G, off_G, g_names), "D": copy_state(our_D, off_D, d_names)}
    off_G.train(our_G.training)
    off_D.train(our_D.training)
    return reports


def official_networks(model: str, our_G, our_D, arch: dict, resolution: int, reports: dict | None = None):
    """(off_G, off_D): the official networks of `model` ('stylegan2' | 'stylegan3') for `arch`,
    holding our weights and buffers. `reports`, when given, receives {'G': CopyReport, 'D': ...}."""
    off_G, off_D = build_official(model, arch, resolution, our_G.img_channels)
    copied = copy_into_official(model, our_G, our_D, off_G, off_D)
    if reports is not None:
        reports.update(copied)
    return off_G, off_D


def official_stylegan2(our_G, our_D, arch: dict, resolution: int, reports: dict | None = None):
    """(off_G, off_D): official StyleGAN2 networks for models.stylegan2.arch holding our weights."""
    return official_networks("stylegan2", our_G, our_D, arch, resolution, reports)


def official_stylegan3(our_G, our_D, arch: dict, resolution: int, reports: dict | None = None):
    """(off_G, off_D): official StyleGAN3 (config arch['config']) and its StyleGAN2 D for
    models.stylegan3.arch, holding our weights."""
    return official_networks("stylegan3", our_G, our_D, arch, resolution, reports)


# Settings the state copy cannot see: a mismatch here would only show on CUDA (precision) or in
# shapes, so it is named directly.


def _same(what: str, ours, theirs) -> None:
    if ours != theirs:
        raise AssertionError(f"{what}: ours {ours} != official {theirs}")


def _check_stylegan2_structure(our_G, off_G) -> None:
    _same("G num_ws", our_G.num_ws, off_G.num_ws)
    _same("mapping w_avg_beta", our_G.mapping.w_avg_beta, off_G.mapping.w_avg_beta)
    for block, res in zip(our_G.synthesis.blocks, off_G.synthesis.block_resolutions):
        off = getattr(off_G.synthesis, f"b{res}")
        _same(f"G b{res} low precision", block.use_low_precision, off.use_fp16)
        _same(f"G b{res} conv_clamp", block.conv1.conv_clamp, off.conv1.conv_clamp)
        _same(f"G b{res} torgb conv_clamp", block.torgb.conv_clamp, off.torgb.conv_clamp)


def _check_stylegan3_structure(our_G, off_G) -> None:
    _same("G num_ws", our_G.num_ws, off_G.num_ws)
    _same("mapping w_avg_beta", our_G.mapping.w_avg_beta, off_G.mapping.w_avg_beta)
    _same("input size", our_G.synthesis.input.size, int(off_G.synthesis.input.size[0]))
    _same("output_scale", our_G.synthesis.output_scale, off_G.synthesis.output_scale)
    for idx, (layer, name) in enumerate(zip(our_G.synthesis.layer_list, off_G.synthesis.layer_names)):
        off = getattr(off_G.synthesis, name)
        for ours, theirs in (
            ("use_low_precision", "use_fp16"),
            ("in_size", "in_size"),
            ("out_size", "out_size"),
            ("in_channels", "in_channels"),
            ("out_channels", "out_channels"),
            ("conv_kernel", "conv_kernel"),
            ("up_factor", "up_factor"),
            ("down_factor", "down_factor"),
            ("padding", "padding"),
            ("conv_clamp", "conv_clamp"),
            ("magnitude_ema_beta", "magnitude_ema_beta"),
        ):
            value = getattr(off, theirs)
            value = int(value[0]) if ours.endswith("_size") else value
            _same(f"G layer {idx} ({name}) {ours}", getattr(layer, ours), value)


def _check_discriminator_structure(our_D, off_D) -> None:
    for block, res in zip(our_D.blocks, off_D.block_resolutions):
        off = getattr(off_D, f"b{res}")
        _same(f"D b{res} low precision", block.use_low_precision, off.use_fp16)
        _same(f"D b{res} conv_clamp", block.conv0.conv_clamp, off.conv0.conv_clamp)
    _same("D mbstd group", our_D.epilogue.mbstd.group_size, off_D.b4.mbstd.group_size)


# ----------------------------------------------------------------------------------------------
# Comparisons


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(max |ours - theirs|, that / max |theirs|); shapes must agree up to a reshape."""
    if ours.numel() != theirs.numel():
        raise AssertionError(f"shapes differ: ours {tuple(ours.shape)}, official {tuple(theirs.shape)}")
    ours, theirs = ours.detach().reshape(-1).double(), theirs.detach().reshape(-1).double()
    err = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    scale = theirs.abs().max().item() if theirs.numel() else 0.0
    return err, err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


def param_pairs(ours: nn.Module, theirs: nn.Module, report: CopyReport):
    """(our name, our parameter, official parameter) for every learned tensor of the copy."""
    our_params, off_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    return [(u, our_params[u], off_params[o]) for o, u in report.pairs if u in our_params]


def grads_diff(pairs) -> tuple[float, float, str, float]:
    """Over (name, gradient a, gradient b) triples: the worst (abs, rel, name) per tensor, and the
    norm-wise relative difference of all of them together."""
    worst, err2, norm2 = (0.0, 0.0, ""), 0.0, 0.0
    for name, a, b in pairs:
        if (a is None) != (b is None):
            raise AssertionError(f"{name}: a gradient on one side only")
        if a is None:
            continue
        err, rel = max_diff(a, b)
        if rel > worst[1] or (rel == worst[1] and err > worst[0]):
            worst = (err, rel, name)
        err2 += (a.double().reshape(-1) - b.double().reshape(-1)).square().sum().item()
        norm2 += b.double().square().sum().item()
    return (*worst, math.sqrt(err2 / norm2) if norm2 > 0 else 0.0)


def param_grads(pairs) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
    """(name, our gradient, official gradient) of every pair from param_pairs."""
    return [(name, ours.grad, theirs.grad) for name, ours, theirs in pairs]


@dataclass
class Row:
    case: str
    check: str
    abs_err: float
    rel_err: float
    note: str = ""
    tolerance: float | None = REL_TOLERANCE  # None: for information, never fails

    @property
    def ok(self) -> bool:
        return self.tolerance is None or self.rel_err <= self.tolerance

    def __str__(self) -> str:
        flag = "info" if self.tolerance is None else "ok  " if self.ok else "FAIL"
        return f"{flag} {self.case:<16} {self.check:<50} abs {self.abs_err:9.2e}  rel {self.rel_err:9.2e}  {self.note}"


def _zero_grads(*nets: nn.Module) -> None:
    for net in nets:
        for p in net.parameters():
            p.grad = None


def perturb_(net: nn.Module, generator: torch.Generator) -> None:
    """Move every parameter off its initial value (relative size 0.2, absolute 0.2 where it is 0)
    and the running statistics off theirs, so that no term hides behind a zero or a one."""
    with torch.no_grad():
        for p in net.parameters():
            scale = p.abs().mean().item() or 1.0
            p.add_(torch.randn(p.shape, generator=generator) * 0.2 * scale)
        for name, b in net.named_buffers():
            if name.endswith("w_avg"):
                b.copy_(torch.randn(b.shape, generator=generator))
            elif name.endswith("magnitude_ema"):
                b.fill_(0.5 + torch.rand([], generator=generator).item() * 1.5)


# ----------------------------------------------------------------------------------------------
# The check


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # stylegan2 | stylegan3
    resolution: int
    arch: dict


TINY = dict(z_dim=32, w_dim=32, mapping_layers=2, channel_max=32)


def study_arch(model: str, **changes) -> dict:
    return deep_merge(read_yaml(REPO_ROOT / "params.yaml")["models"][model]["arch"], changes)


def cases() -> list[Case]:
    """Tiny networks at 16 and 32 px; one of each family with conv_clamp 1 so the clamp is active."""
    sg3 = dict(TINY, channel_base=512)  # 256 / cutoff channels: 32 down to 11 over the layers
    return [
        Case("sg2-16", "stylegan2", 16, study_arch("stylegan2", **TINY, channel_base=256)),
        Case("sg2-32-clamp1", "stylegan2", 32, study_arch("stylegan2", **TINY, channel_base=256, conv_clamp=1)),
        Case("sg3t-16", "stylegan3", 16, study_arch("stylegan3", **sg3, config="t")),
        Case("sg3t-32-clamp1", "stylegan3", 32, study_arch("stylegan3", **sg3, config="t", num_layers=6, conv_clamp=1)),
        Case("sg3r-16", "stylegan3", 16, study_arch("stylegan3", **sg3, config="r")),
        Case("sg3r-32", "stylegan3", 32, study_arch("stylegan3", **sg3, config="r", num_layers=6, margin=4)),
    ]


def check_case(case: Case, batch: int = 8, seed: int = 0) -> list[Row]:
    rows: list[Row] = []

    def row(check: str, ours, theirs, note: str = "") -> None:
        rows.append(Row(case.name, check, *max_diff(ours, theirs), note))

    # the same seed gives the same initial tensors (draws in the same order, shapes and scales)
    torch.manual_seed(seed)
    our_G, our_D = models.build(case.model, case.arch, case.resolution)
    torch.manual_seed(seed)
    off_G, off_D = build_official(case.model, case.arch, case.resolution)
    maps = name_maps(case.model, off_G, off_D)
    for net, ours, theirs, names in zip("GD", (our_G, our_D), (off_G, off_D), maps):
        our_state, off_state = ours.state_dict(), theirs.state_dict()
        triples = [(u, our_state[u], off_state[o]) for o, u in names if u is not None]
        err, rel, name, _ = grads_diff(triples)
        rows.append(Row(case.name, f"{net} initial tensors, same seed", err, rel, f"worst {name}"))

    perturb_(our_G, torch.Generator().manual_seed(seed + 1))
    perturb_(our_D, torch.Generator().manual_seed(seed + 2))
    reports = copy_into_official(case.model, our_G, our_D, off_G, off_D)
    design = max(reports["G"].designed_diff.values(), default=0.0)
    design = max(design, *reports["D"].designed_diff.values())
    rows.append(Row(case.name, "designed filters/transform (before copy)", design, design))

    noise = case.model == "stylegan2"  # StyleGAN3 has no noise inputs
    inputs = torch.Generator().manual_seed(seed + 3)
    z = torch.randn([batch, case.arch["z_dim"]], generator=inputs)
    c = torch.zeros([batch, 0])
    img_real = torch.randn([batch, 3, case.resolution, case.resolution], generator=inputs)
    y = torch.randn([batch, 3, case.resolution, case.resolution], generator=inputs)  # a fixed linear read-out
    num_ws = our_G.num_ws

    with torch.no_grad():
        for psi, cutoff in ((1.0, None), (0.7, None), (0.5, 2)):
            ours = our_G.mapping(z, truncation_psi=psi, truncation_cutoff=cutoff)
            theirs = off_G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
            row(f"mapping psi={psi} cutoff={cutoff}", ours, theirs)
        ws = our_G.mapping(z) + 0.3 * torch.randn([batch, num_ws, case.arch["w_dim"]], generator=inputs)

        for mode in ("eval", "train"):  # StyleGAN2: fused modulated conv in eval, activation scaling in train
            our_G.train(mode == "train")
            off_G.train(mode == "train")
            if noise:
                const = our_G.synthesis(ws, noise_mode="const")
                row(f"synthesis noise const ({mode})", const, off_G.synthesis(ws, noise_mode="const"))
                row(
                    f"synthesis noise none ({mode})",
                    our_G.synthesis(ws, noise_mode="none"),
                    off_G.synthesis(ws, noise_mode="none"),
                )
                torch.manual_seed(seed + 10)
                ours = our_G.synthesis(ws, noise_mode="random")
                after_ours = torch.rand([])  # the generator state after the draws
                torch.manual_seed(seed + 10)
                theirs = off_G.synthesis(ws, noise_mode="random")
                after_theirs = torch.rand([])
                moved = max_diff(ours, const)[1]
                row(f"synthesis noise random, same seed ({mode})", ours, theirs, f"vs const rel {moved:.2f}")
                row(f"torch RNG state after random noise ({mode})", after_ours, after_theirs)
                torch.manual_seed(seed + 11)
                ours = our_G(z, truncation_psi=0.7)
                torch.manual_seed(seed + 11)
                theirs = off_G(z, c, truncation_psi=0.7)
                row(f"G(z, psi=0.7) random noise ({mode})", ours, theirs)
            else:
                row(f"synthesis ({mode})", our_G.synthesis(ws), off_G.synthesis(ws))
                row(f"G(z, psi=0.7) ({mode})", our_G(z, truncation_psi=0.7), off_G(z, c, truncation_psi=0.7))

        # update_emas: w_avg (and StyleGAN3's magnitude EMAs) after a forward that updates them
        before = our_G.mapping.w_avg.clone()
        ours = our_G.mapping(z, update_emas=True)
        theirs = off_G.mapping(z, c, update_emas=True)
        row("mapping(update_emas) output", ours, theirs)
        row(
            "w_avg after update_emas",
            our_G.mapping.w_avg,
            off_G.mapping.w_avg,
            f"moved {max_diff(our_G.mapping.w_avg, before)[0]:.2e}",
        )
        if not noise:
            ema_ours = [layer.magnitude_ema for layer in our_G.synthesis.layer_list]
            before = torch.stack(ema_ours).clone()
            ours = our_G.synthesis(ws, update_emas=True)
            theirs = off_G.synthesis(ws, update_emas=True)
            row("synthesis(update_emas) output", ours, theirs)
            ema_theirs = [getattr(off_G.synthesis, name).magnitude_ema for name in off_G.synthesis.layer_names]
            row(
                "magnitude_ema after update_emas (all)",
                torch.stack(ema_ours),
                torch.stack(ema_theirs),
                f"moved {max_diff(torch.stack(ema_ours), before)[0]:.2e}",
            )

        row("D logits", our_D(img_real), off_D(img_real, c))

    g_pairs = param_pairs(our_G, off_G, reports["G"])
    d_pairs = param_pairs(our_D, off_D, reports["D"])

    def grad_row(check: str, triples, tolerance: float | None = GRAD_REL_TOLERANCE) -> None:
        err, rel, name, global_rel = grads_diff(triples)
        rows.append(Row(case.name, check, err, rel, f"norm-wise {global_rel:.1e}, worst {name}", tolerance))

    synthesis_kwargs = {"noise_mode": "const"} if noise else {}
    # StyleGAN2 computes differently in train (non-fused) and eval (fused) mode; StyleGAN3 does not
    ours_by_mode = {}
    for mode in ("eval", "train") if noise else ("train",):
        our_G.train(mode == "train")
        off_G.train(mode == "train")
        # first order: a linear read-out of the image from z, through mapping and synthesis
        _zero_grads(our_G, off_G)
        zs = [z.clone().requires_grad_(True) for _ in range(2)]
        (our_G.synthesis(our_G.mapping(zs[0]), **synthesis_kwargs) * y).sum().backward()
        (off_G.synthesis(off_G.mapping(zs[1], c), **synthesis_kwargs) * y).sum().backward()
        row(f"G grad wrt z ({mode})", zs[0].grad, zs[1].grad)
        grad_row(f"G grads, all params ({mode})", param_grads(g_pairs))
        first = {name: ours.grad for name, ours, _ in g_pairs}

        # second order: the path-length term |d(img . y)/dws| differentiated wrt G's parameters
        _zero_grads(our_G, off_G)
        pl = []
        for G in (our_G, off_G):
            w = ws.clone().requires_grad_(True)
            (g,) = torch.autograd.grad((G.synthesis(w, **synthesis_kwargs) * y).sum(), w, create_graph=True)
            lengths = g.square().sum(2).mean(1).sqrt()
            lengths.mean().backward()
            pl.append(lengths)
        row(f"path lengths ({mode})", pl[0], pl[1])
        grad_row(f"G double-backward grads ({mode})", param_grads(g_pairs))
        ours_by_mode[mode] = first, {name: ours.grad for name, ours, _ in g_pairs}
    if noise:  # the fp32 floor: our own two forms of the same function
        for k, what in enumerate(("grads", "double-backward grads")):
            a, b = ours_by_mode["eval"][k], ours_by_mode["train"][k]
            grad_row(f"floor: G {what}, ours eval vs train", [(n, a[n], b[n]) for n in a], None)

    # D: first order (inputs and parameters) and R1's double backward
    _zero_grads(our_D, off_D)
    xs = [img_real.clone().requires_grad_(True) for _ in range(2)]
    F.softplus(our_D(xs[0])).sum().backward()
    F.softplus(off_D(xs[1], c)).sum().backward()
    row("D grad wrt images", xs[0].grad, xs[1].grad)
    grad_row("D grads, all params", param_grads(d_pairs))

    _zero_grads(our_D, off_D)
    penalties = []
    for D, args in ((our_D, ()), (off_D, (c,))):
        x = img_real.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, *args).sum(), x, create_graph=True)
        penalty = g.square().sum([1, 2, 3])
        penalty.mean().backward()
        penalties.append(penalty)
    row("R1 penalty", penalties[0], penalties[1])
    grad_row("R1 double-backward grads, all D params", param_grads(d_pairs))
    return rows


def check(names: list[str] | None = None, verbose: bool = True) -> list[Row]:
    """Every case (or those named), every comparison; prints one row per comparison."""
    known = {case.name: case for case in cases()}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise UserError(f"no case named {unknown}: choose from {list(known)}")
    rows = []
    for case in known.values():
        if names and case.name not in names:
            continue
        case_rows = check_case(case)
        if verbose:
            for r in case_rows:
                print(r, flush=True)
        rows += case_rows
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help=f"case names (default: all): {[c.name for c in cases()]}")
    args = parser.parse_args(argv)
    print(
        f"official: NVlabs/stylegan3 @ {commit_of(REPO)}; fp32 on CPU; rel = max |ours - official| / max |official|;"
        f" fail above {REL_TOLERANCE:g} ({GRAD_REL_TOLERANCE:g} for parameter gradients, per tensor)"
    )
    rows = check(args.cases)
    graded = [r for r in rows if r.tolerance is not None]
    failed = [r for r in graded if not r.ok]
    print(f"{len(graded) - len(failed)}/{len(graded)} comparisons within tolerance" + (" - FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:  # a missing repository or an unknown case: one line; a mismatch keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
