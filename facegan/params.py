"""Load params.yaml, apply the selected profile, and validate the result.

The study defaults in params.yaml are the schema: a key that is not there is unknown,
and a value must have the type of the default. Value constraints that types cannot
express (enums, powers of two, positive budgets) are in CONSTRAINTS. Every problem is
a one-line UserError naming the key and what is allowed.
"""
from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any, Callable

import yaml

from facegan.errors import UserError

MODEL_NAMES = ("dcgan", "pggan", "stylegan", "stylegan2", "stylegan3", "styleswin")
DEFAULT_PATH = Path("params.yaml")
SCHEMA_PATH = Path(__file__).with_name("params_schema.yaml")


def _power_of_two_in(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi and (v & (v - 1)) == 0


def _one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _betas(v) -> bool:
    return len(v) == 2 and all(0.0 <= b < 1.0 for b in v)


# (dotted key pattern, check, what is allowed)
CONSTRAINTS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model", _one_of("all", *MODEL_NAMES), f"one of all, {', '.join(MODEL_NAMES)}"),
    ("data.source", _one_of("celeba", "url", "folder", "synthetic"), "one of celeba, url, folder, synthetic"),
    ("data.resolution", _power_of_two_in(32, 512), "a power of two from 32 to 512"),
    ("data.num_faces", _positive, "a positive integer"),
    ("data.synthetic_images", _positive, "a positive integer"),
    ("data.mtcnn.min_confidence", lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("data.mtcnn.min_face_size", _positive, "a positive number of pixels"),
    ("data.mtcnn.multi_face", _one_of("reject", "largest"), "reject or largest"),
    ("data.mtcnn.batch_size", _positive, "a positive integer"),
    ("data.mtcnn.max_side", lambda v: v >= 64, "at least 64 pixels"),
    ("data.mtcnn.cpu_threads", _non_negative, "0 (torch's default) or a number of threads"),
    ("data.align.landmark_weights", lambda v: len(v) == 5 and all(w >= 0 for w in v) and min(v[:2]) > 0,
     "five non-negative weights (eyes, nose, mouth corners) with both eye weights positive"),
    ("data.checkpoint_every", _positive, "a positive number of images"),
    ("data.align.eye_distance", lambda v: 0.05 <= v <= 0.8, "a fraction in [0.05, 0.8]"),
    ("data.align.eye_height", lambda v: 0.1 <= v <= 0.9, "a fraction in [0.1, 0.9]"),
    ("*.device", _one_of("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    ("train.precision", _one_of("auto", "fp32", "fp16", "bf16"), "auto, fp32, fp16 or bf16"),
    ("train.*_kimg", _positive, "a positive number of kimg"),
    ("train.grid_size", _positive, "a positive integer"),
    ("train.num_workers", _non_negative, "0 or more"),
    ("evaluate.extractor", _one_of("inception", "fid_helper", "proxy"), "inception, fid_helper or proxy"),
    ("evaluate.pr_k", _positive, "a positive number of neighbours"),
    ("evaluate.ppl_samples", _positive, "a positive number of latent pairs"),
    ("evaluate.ppl_space", _one_of("auto", "z", "w"), "auto, z or w"),
    ("evaluate.ppl_sampling", _one_of("end", "full"), "end or full"),
    ("evaluate.ppl_epsilon", lambda v: 0 < v < 0.1, "a small positive step such as 0.0001"),
    ("evaluate.lpips", _one_of("vgg", "proxy"), "vgg or proxy"),
    ("evaluate.grid_size", _positive, "a positive integer"),
    ("evaluate.truncation_psis", lambda v: len(v) > 0 and all(0.0 <= p <= 2.0 for p in v), "a non-empty list of psi in [0, 2]"),
    ("evaluate.truncation_rows", _positive, "a positive integer"),
    ("evaluate.interpolation_steps", lambda v: v >= 2, "at least 2"),
    ("evaluate.num_*", _positive, "a positive integer"),
    ("evaluate.snapshot_num_gen", _positive, "a positive integer"),
    ("evaluate.batch_size", _positive, "a positive integer"),
    ("evaluate.fid_seeds", _positive, "a positive integer"),
    ("models.*.kimg", _positive, "a positive number of kimg (the training budget)"),
    ("models.*.batch_size", _positive, "a positive integer"),
    ("models.*.lr_*", _positive, "a positive learning rate"),
    ("models.*.betas_*", _betas, "two Adam betas in [0, 1)"),
    ("models.*.ema_kimg", _non_negative, "0 (off) or a positive half-life in kimg"),
    ("models.*.ema_rampup", _non_negative, "0 (off) or a positive ratio"),
    ("models.*.grad_clip", _non_negative, "0 (off) or a positive norm"),
    ("models.*.loss.type", _one_of("ns", "wgan_gp", "hinge"), "ns, wgan_gp or hinge"),
    ("models.*.loss.*_every", _positive, "a positive number of steps"),
    ("models.*.loss.r1_gamma", _non_negative, "0 (off) or positive"),
    ("models.*.loss.pl_weight", _non_negative, "0 (off) or positive"),
    ("models.*.loss.gp_weight", _non_negative, "0 (off) or positive"),
    ("models.*.loss.drift", _non_negative, "0 (off) or positive"),
    ("models.*.progressive.*_kimg", lambda v: all(k >= 0 for k in v), "a list of kimg >= 0 (one per level, the last repeats)"),
    ("models.*.progressive.batch_sizes", lambda v: all(b > 0 for b in v),
     "a list of positive batch sizes (one per level, the last repeats), or [] for the model's batch_size"),
]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _same_type(default, value) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list) and all(_same_type(default[0], v) for v in value) if default else isinstance(value, list)
    return isinstance(value, type(default))


def _check_schema(schema: dict, values: dict, prefix: str = "") -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(schema))
            raise UserError(f"unknown param '{dotted}' in params.yaml; allowed keys here: {allowed}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UserError(f"param '{dotted}' must be a mapping of {', '.join(sorted(default))}")
            if dotted != "profiles":
                _check_schema(default, value, dotted + ".")
        elif not _same_type(default, value):
            raise UserError(f"param '{dotted}' must be {_type_name(default)} (like {default!r}), got {value!r}")


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def validate(params: dict, schema: dict) -> dict:
    """Check `params` (profile already applied) against `schema`; return params unchanged."""
    _check_schema(schema, params)
    for key in MODEL_NAMES:
        if key not in params.get("models", {}):
            raise UserError(f"params.yaml has no section 'models.{key}': restore it from git")
    for key, value in _flatten({k: v for k, v in params.items() if k != "profiles"}).items():
        for pattern, check, allowed in CONSTRAINTS:
            if fnmatch.fnmatchcase(key, pattern) and not check(value):
                raise UserError(f"param '{key}' = {value!r} is invalid: must be {allowed}")
    return params


def load_params(path: str | Path = DEFAULT_PATH, overrides: dict | None = None) -> dict:
    """Read params.yaml, merge `profiles[profile]` (and `overrides`, for tests) and validate."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run from the repository root, or restore it with git checkout {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if overrides:
        raw = deep_merge(raw, overrides)
    profile = raw.get("profile", "study")
    profiles = raw.get("profiles", {})
    if profile not in profiles:
        raise UserError(f"param 'profile' = {profile!r} is invalid: must be one of {', '.join(profiles)}")
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    merged = deep_merge(raw, profiles[profile] or {})
    _check_schema(schema, profiles[profile] or {}, f"profiles.{profile}.")
    return validate(merged, schema)


def model_selected(params: dict, name: str) -> bool:
    return params["model"] in ("all", name)
