"""The study's settings as one typed definition: every section of params.yaml a class, every key a field
with its type and, beside it, what values it allows.

params.yaml holds the values and this module what they may be, so a class has no defaults: a key
missing from params.yaml is an error, not a silent default written a second time here. The classes
are pydantic v2 models in strict mode (an int is not a bool, 16.0 is not a batch size, inf and NaN
are not numbers), closed to unknown keys, and frozen. A value that breaks a rule fails with the
rule's own words (`Rule.allowed`), which facegan.params turns into one line naming the key as the
user wrote it (`profiles.<p>.<key>` for a profile's value).

`models` has one class per model (its own `arch`, and `progressive` for the growing ones); the
study's models are those params.yaml has a section for, in its order (the report's row order). A new
model is a module in models/, a section in params.yaml and a class here.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

# ------------------------------------------------------------------------------------------------
# Rules: a check and the words that say what it allows


class Rule:
    """A value rule: `check(value)` must hold; `allowed` completes "must be ..." in the error."""

    def __init__(self, check: Callable[[Any], bool], allowed: str):
        self.check, self.allowed = check, allowed

    def __call__(self, value: Any) -> Any:
        if not self.check(value):
            raise PydanticCustomError("rule", "{allowed}", {"allowed": self.allowed})
        return value


def rule(check: Callable[[Any], bool], allowed: str) -> AfterValidator:
    return AfterValidator(Rule(check, allowed))


def positive(allowed: str = "a positive integer") -> AfterValidator:
    return rule(lambda v: v > 0, allowed)


def non_negative(allowed: str) -> AfterValidator:
    return rule(lambda v: v >= 0, allowed)


def within(lo: float, hi: float, allowed: str) -> AfterValidator:
    return rule(lambda v: lo <= v <= hi, allowed)


def power_of_two(lo: int, hi: int, allowed: str) -> AfterValidator:
    return rule(lambda v: lo <= v <= hi and (v & (v - 1)) == 0, allowed)


def spoken_choices(options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def choice(*options: str, allowed: str | None = None):
    """A str that is one of `options` (typed as their Literal); checked before the type, so that any other
    value, a number included, is told the choices."""
    words = allowed or spoken_choices(options)
    return Annotated[Literal[options], BeforeValidator(Rule(lambda v: v in options, words))]


Device = choice("auto", "cpu", "cuda")
Probability = Annotated[float, within(0.0, 1.0, "a probability in [0, 1]")]
Betas = Annotated[
    list[float], rule(lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two Adam betas in [0, 1)")
]
Decay = Annotated[float, rule(lambda v: 0.0 <= v < 1.0, "a decay in [0, 1)")]
PositiveInt = Annotated[int, positive()]
PositiveNumber = Annotated[float, positive("a positive number")]
Kimg = Annotated[float, positive("a positive number of kimg")]
Off = Annotated[float, non_negative("0 (off) or positive")]


class Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


# ------------------------------------------------------------------------------------------------
# data, placement, train, evaluate, tune


class MtcnnSettings(Section):
    min_confidence: Probability
    min_face_size: Annotated[int, positive("a positive number of pixels")]
    multi_face: choice("reject", "largest")
    batch_size: PositiveInt
    device: Device
    max_side: Annotated[int, rule(lambda v: v >= 64, "at least 64 pixels")]
    cpu_threads: Annotated[int, non_negative("0 (torch's default) or a number of threads")]


class AlignSettings(Section):
    eye_distance: Annotated[float, within(0.05, 0.8, "a fraction in [0.05, 0.8]")]
    eye_height: Annotated[float, within(0.1, 0.9, "a fraction in [0.1, 0.9]")]
    landmark_weights: Annotated[
        list[float],
        rule(
            lambda v: len(v) == 5 and all(w >= 0 for w in v) and min(v[:2]) > 0,
            "five non-negative weights (eyes, nose, mouth corners) with both eye weights positive",
        ),
    ]


class DataSettings(Section):
    source: choice("celeba", "url", "folder", "synthetic", allowed="one of celeba, url, folder, synthetic")
    url: str
    sha256: str
    folder: str
    download_dir: str
    partition_file: str
    checkpoint_every: Annotated[int, positive("a positive number of images")]
    num_faces: PositiveInt
    resolution: Annotated[int, power_of_two(32, 512, "a power of two from 32 to 512")]
    synthetic_images: PositiveInt
    mtcnn: MtcnnSettings
    align: AlignSettings


class PlacementSettings(Section):
    gpus: Annotated[int, positive("a positive number of processes per node")]
    nnodes: Annotated[int, positive("a positive number of nodes")]
    rdzv_endpoint: str
    gpu: Annotated[int, rule(lambda v: v >= -1, "-1 (every visible GPU) or a GPU index")]


class SpeedSettings(Section):
    cache_on_device: choice("auto", "on", "off")
    check_every: Annotated[int, positive("a positive number of steps")]
    fused_adam: bool
    foreach_ema: bool
    channels_last: bool
    compile: choice("none", "default", "cudagraphs")


class TrainSettings(Section):
    device: Device
    budget_minutes: Annotated[float, non_negative("0 (the kimg budget alone) or minutes of training")]
    precision: choice("auto", "fp32", "fp16", "bf16")
    checkpoint_kimg: Kimg
    snapshot_kimg: Kimg
    snapshot_level_ends: bool
    sample_kimg: Kimg
    grid_size: PositiveInt
    num_workers: Annotated[int, non_negative("0 or more")]
    deterministic: bool
    log_kimg: Kimg
    speed: SpeedSettings


class EvaluateSettings(Section):
    extractor: choice("auto", "inception", "fid_helper", "proxy")
    inception_weights: str
    fid_helper_weights: str
    num_gen: PositiveInt
    num_ref: PositiveInt
    batch_size: PositiveInt
    resize_workers: Annotated[
        int, rule(lambda v: v >= -1, "-1 (auto), 0 (in the main process) or a number of processes")
    ]
    fid_seeds: PositiveInt
    snapshot_num_gen: PositiveInt
    pr_k: Annotated[int, positive("a positive number of neighbours")]
    fid_inf_points: Annotated[int, rule(lambda v: v >= 2, "at least 2 sample counts")]
    fid_inf_smallest: Annotated[float, rule(lambda v: 0 < v < 1, "a fraction of num_gen in (0, 1)")]
    dinov2: choice("official", "stand_in", "none")  # not "off": YAML 1.1 reads that as false
    dinov2_weights: str
    dinov2_stand_in: choice("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2")
    dinov2_input: Annotated[
        int, rule(lambda v: v >= 14 and v % 14 == 0, "a multiple of the 14 px patch (224: dgm-eval)")
    ]
    ppl_samples: Annotated[int, positive("a positive number of latent pairs")]
    ppl_space: choice("auto", "z", "w")
    ppl_sampling: choice("end", "full")
    ppl_epsilon: Annotated[float, rule(lambda v: 0 < v < 0.1, "a small positive step such as 0.0001")]
    ppl_crop: bool
    lpips: choice("vgg", "proxy")
    lpips_weights: str
    grid_size: PositiveInt
    truncation_psis: Annotated[
        list[float], rule(lambda v: len(v) > 0 and all(0.0 <= p <= 2.0 for p in v), "a non-empty list of psi in [0, 2]")
    ]
    truncation_rows: PositiveInt
    interpolation_steps: Annotated[int, rule(lambda v: v >= 2, "at least 2")]
    device: Device


class TuneSettings(Section):
    trials: Annotated[int, positive("a positive number of trials")]
    kimg: Kimg
    snapshot_kimg: Kimg
    num_gen: Annotated[int, positive("a positive number of images")]
    warmup_kimg: Annotated[float, non_negative("0 or more kimg")]
    startup_trials: Annotated[int, non_negative("0 or more trials")]
    space: dict[str, Any]  # <model>: {<dotted key>: [kind, ...]}, checked by facegan.tune against the model sections


# ------------------------------------------------------------------------------------------------
# A model's section: its training recipe, loss, augmentation, architecture and growing schedule


class AugmentSettings(Section):
    mode: choice("ada", "fixed", "cosine", "none")  # cosine: p from 0 to `p` on R3GAN's schedule
    pipe: choice("bgc", "r3gan")  # bgc: ADA's --augpipe=bgc; r3gan: bgc with colour at half probability, plus cutout
    p: Probability
    target: Annotated[float, within(0.0, 1.0, "a target sign mean in [0, 1]")]
    interval: Annotated[int, positive("a positive number of steps")]
    kimg: Kimg


class LossSettings(Section):
    type: choice("ns", "wgan_gp", "hinge", "rpgan")  # rpgan: relativistic pairing, with R1 and R2 at r1_gamma
    phase_order: choice("DG", "GD", allowed="DG (D phases first) or GD")
    latents: choice("per_phase", "per_step")
    r1_gamma: Off
    r1_every: Annotated[int, positive("a positive number of steps")]
    pl_weight: Off
    pl_every: Annotated[int, positive("a positive number of steps")]
    gp_weight: Off
    drift: Off
    style_mixing_prob: Probability
    blur_init_sigma: Annotated[float, non_negative("0 (off) or a positive value")]
    blur_fade_kimg: Annotated[float, non_negative("0 (off) or a positive value")]
    bcr_real_lambda: Off
    bcr_fake_lambda: Off


class ProgressiveSettings(Section):
    initial_resolution: Annotated[int, power_of_two(4, 1024, "a power of two from 4 up")]
    stable_kimg: Annotated[
        list[float], rule(lambda v: all(k >= 0 for k in v), "a list of kimg >= 0 (one per level, the last repeats)")
    ]
    fade_kimg: Annotated[
        list[float], rule(lambda v: all(k >= 0 for k in v), "a list of kimg >= 0 (one per level, the last repeats)")
    ]
    batch_sizes: Annotated[
        list[int],
        rule(
            lambda v: all(b > 0 for b in v),
            "a list of positive batch sizes (one per level, the last repeats), or [] for the model's batch_size",
        ),
    ]
    lrs: Annotated[list[float], rule(lambda v: all(lr > 0 for lr in v), "a list of positive learning rates, or []")]
    reset_optimizer: bool


Width = Annotated[int, positive("a positive number")]
Fp16Resolutions = Annotated[int, non_negative("0 (fp32 everywhere) or a number of resolutions")]
ConvClamp = Annotated[int, non_negative("0 (off) or a positive clamp")]


class DcganArch(Section):
    z_dim: Width
    g_channels: Width
    d_channels: Width
    max_channels: Width


class PgganArch(Section):
    z_dim: Width
    fmap_base: Width
    fmap_max: Width
    mbstd_group_size: Width


class MappingArch(Section):
    """The style-based generators' latent and mapping network."""

    z_dim: Width
    w_dim: Width
    mapping_layers: Width
    mapping_lr_multiplier: Annotated[float, positive("a positive number")]


class StyleganArch(MappingArch):
    fmap_base: Width
    fmap_max: Width
    num_fp16_res: Fp16Resolutions
    conv_clamp: ConvClamp
    mbstd_group_size: Width


class Stylegan2Arch(MappingArch):
    channel_base: Width
    channel_max: Width
    num_fp16_res: Fp16Resolutions
    conv_clamp: ConvClamp
    mbstd_group_size: Width


class Stylegan3Arch(MappingArch):
    channel_base: Width
    channel_max: Width
    config: choice("t", "r")
    num_layers: Width
    num_critical: Width
    margin: Annotated[int, non_negative("0 or more pixels")]
    output_scale: PositiveNumber
    magnitude_ema_beta: Decay
    num_fp16_res: Fp16Resolutions
    conv_clamp: ConvClamp
    mbstd_group_size: Width


class StyleswinArch(MappingArch):
    window_size: Annotated[int, power_of_two(2, 1 << 30, "a power of two >= 2")]
    window_layout: choice("masked", "split")
    blocks_per_stage: Width
    head_dim: Width
    min_heads: Annotated[int, rule(lambda v: v >= 2, "2 or more heads")]
    mlp_ratio: Annotated[float, positive("a positive ratio")]
    g_channel_base: Width
    d_channel_base: Width
    channel_max: Width


class R3ganArch(Section):
    z_dim: Width
    channel_base: Width  # stage width min(channel_base / res, channel_max)
    channel_max: Width
    group_channels: Width  # channels per group of the grouped conv: cardinality = width x expansion / this
    blocks_per_stage: Width
    expansion: Width
    bf16_stages: Fp16Resolutions


class CosineSettings(Section):
    """R3GAN's schedules (brownvc/R3GAN training_loop.py cosine_decay_with_warmup, no warmup): each value
    moves from its start to its end along half a cosine over decay_kimg of images seen, then stays."""

    decay_kimg: Kimg
    lr_final: Annotated[float, positive("a positive learning rate")]  # from lr_g / lr_d
    beta2_final: Decay  # from betas_g[1] / betas_d[1]
    gamma_final: Off  # from loss.r1_gamma; the EMA half-life goes from 0 to ema_kimg, augment p from 0 to augment.p


class ModelSettings(Section):
    """What every model's section has: the budget, the optimiser, the G EMA and the loss."""

    kimg: Annotated[float, positive("a positive number of kimg (the training budget)")]
    batch_size: PositiveInt
    lr_g: Annotated[float, positive("a positive learning rate")]
    lr_d: Annotated[float, positive("a positive learning rate")]
    betas_g: Betas
    betas_d: Betas
    ema_kimg: Annotated[float, non_negative("0 (off) or a positive half-life in kimg")]
    ema_rampup: Annotated[float, non_negative("0 (off) or a positive ratio")]
    grad_clip_d: Annotated[float, non_negative("0 (off) or a positive norm")]
    lr_decay_kimg: Annotated[float, non_negative("0 (constant lr) or the kimg of the final linear decay")]
    xflip: bool
    augment: AugmentSettings
    loss: LossSettings

    def cosine_schedule(self) -> CosineSettings | None:
        """R3GAN's cosine schedules of lr, beta2, gamma, the EMA and p (facegan.training.values); None where
        they are constant or decay linearly (every other model)."""
        return None

    def warnings(self) -> list[str]:
        """Combinations the official recipe would not train, which training logs at its start."""
        return []


class DcganSettings(ModelSettings):
    arch: DcganArch


class PgganSettings(ModelSettings):
    arch: PgganArch
    progressive: ProgressiveSettings


class StyleganSettings(ModelSettings):
    arch: StyleganArch
    progressive: ProgressiveSettings


class Stylegan2Settings(ModelSettings):
    arch: Stylegan2Arch


class Stylegan3Settings(ModelSettings):
    arch: Stylegan3Arch

    def warnings(self) -> list[str]:
        if self.arch.config == "r" and self.loss.blur_init_sigma == 0:
            return ["arch.config=r without the official D blur: set loss.blur_init_sigma=10 and "
                    "loss.blur_fade_kimg=batch*200/32"]  # fmt: skip
        return []


class StyleswinSettings(ModelSettings):
    arch: StyleswinArch


class R3ganSettings(ModelSettings):
    arch: R3ganArch
    cosine: CosineSettings

    def cosine_schedule(self) -> CosineSettings:
        return self.cosine


class ModelsSettings(Section):
    """The models this module knows. A study trains the ones params.yaml has a section for, in that
    section's order (a project may leave a model out by deleting its section; None here)."""

    dcgan: DcganSettings | None = None
    pggan: PgganSettings | None = None
    stylegan: StyleganSettings | None = None
    stylegan2: Stylegan2Settings | None = None
    stylegan3: Stylegan3Settings | None = None
    styleswin: StyleswinSettings | None = None
    r3gan: R3ganSettings | None = None


MODEL_NAMES: tuple[str, ...] = tuple(ModelsSettings.model_fields)  # every model a study may have


def model_settings_class(model: str) -> type[ModelSettings]:
    """The class of `models.<model>` (its arch, and its growing schedule if it grows)."""
    field = ModelsSettings.model_fields.get(model)
    if field is None:
        raise KeyError(f"no settings class for model {model!r}: add one to facegan.settings.ModelsSettings")
    (cls,) = [arg for arg in typing.get_args(field.annotation) if arg is not type(None)]
    return cls


class Settings(Section):
    """params.yaml after its profile is merged in (`profiles` is checked once merged, so it is free-form)."""

    profile: str
    model: choice("all", *MODEL_NAMES, allowed=f"one of all, {', '.join(MODEL_NAMES)}")
    seed: int
    data: DataSettings
    placement: PlacementSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    models: ModelsSettings
    tune: TuneSettings
    profiles: dict[str, Any]


def field_rules(section: type[Section] = Settings, prefix: str = "") -> dict[str, str]:
    """Every key that has a rule, dotted, with what its rule allows (for the docs and the tests)."""
    out = {}
    for name, field in section.model_fields.items():
        annotation = field.annotation
        members = [a for a in typing.get_args(annotation) if a is not type(None)]  # a model's section is Optional
        annotation = members[0] if len(members) == 1 else annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            out.update(field_rules(annotation, f"{prefix}{name}."))
            continue
        for meta in field.metadata:
            check = getattr(meta, "func", None)
            if isinstance(check, Rule):
                out[f"{prefix}{name}"] = check.allowed
    return out
