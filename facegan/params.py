"""Load params.yaml, apply the selected profile, and validate the result.

params.yaml is the one source of the study's keys and defaults. Its key/type tree (no values)
is generated from it into facegan/params_schema.yaml by `python -m facegan.pipeline`, so that
what a user or `dvc exp run -S` writes into params.yaml is checked against what the code knows:
a key that is not in the schema is unknown, and a value must have the schema's type. Value
constraints that types cannot express (enums, powers of two, positive budgets) are CONSTRAINTS
below. Every problem is a one-line UserError that names the key where it was written (the
profile's key when the profile set it) and what is allowed.

The study's models are the keys of its `models` section: a new model is a module in models/
and a section there (then `python -m facegan.pipeline` regenerates the schema and dvc.yaml).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from facegan.errors import UserError

DEFAULT_PATH = Path("params.yaml")
SCHEMA_PATH = Path(__file__).with_name("params_schema.yaml")
SCHEMA_HEADER = (
    "# GENERATED from params.yaml by `python -m facegan.pipeline`: keys and types only (the values\n"
    "# live in params.yaml). Do not edit; a test fails when it is out of date.\n"
)


# ------------------------------------------------------------------------------------------------
# YAML reading: duplicate keys are errors, and every error keeps its line and column


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (line {mark.line + 1}, column {mark.column + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run from the repository root, or restore it with git checkout {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path} is not valid YAML{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of params (like the shipped params.yaml)")
    return data


# ------------------------------------------------------------------------------------------------
# The schema: the key/type tree of params.yaml


def type_of(value: Any) -> str:
    """The schema's name for a default value's type."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        kinds = sorted({type_of(v) for v in value})
        if kinds == ["float", "int"]:
            kinds = ["float"]
        return f"list[{kinds[0]}]" if len(kinds) == 1 else "list"
    raise UserError(f"params.yaml holds a {type(value).__name__} ({value!r}): use numbers, strings, lists or mappings")


# mappings whose keys are the user's to choose: the profiles' partial overrides, and the tune search spaces
# (checked by facegan.tune against the model sections they name)
FREE_FORM = ("profiles", "tune.space")


def schema_of(params: dict, prefix: str = "") -> dict:
    """The key/type tree of a params tree; FREE_FORM mappings are typed as `mapping` only."""
    return {
        key: (
            "mapping"
            if f"{prefix}{key}" in FREE_FORM
            else schema_of(value, f"{prefix}{key}.")
            if isinstance(value, dict)
            else type_of(value)
        )
        for key, value in params.items()
    }


@functools.cache
def schema() -> dict:
    if not SCHEMA_PATH.exists():
        raise UserError(f"{SCHEMA_PATH} is missing: run `python -m facegan.pipeline` to generate it")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def model_names() -> tuple[str, ...]:
    """The study's models, in params.yaml order (the report's row order)."""
    return tuple(schema()["models"])


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("list"):
        item = kind[5:-1] if kind != "list" else None
        return isinstance(value, list) and (item is None or all(_fits(item, v) for v in value))
    return False


_SPOKEN = {"bool": "true/false", "int": "an integer", "float": "a number", "str": "a string"}


def _spoken(kind: str) -> str:
    if kind.startswith("list["):
        return f"a list of {_SPOKEN[kind[5:-1]].split(' ', 1)[-1]}s"
    return _SPOKEN.get(kind, "a list")


# ------------------------------------------------------------------------------------------------
# Value constraints


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


def _data_constraints() -> list[tuple[str, Callable[[Any], bool], str]]:
    """data.*: source, faces, MTCNN and alignment."""
    return [
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
        (
            "data.align.landmark_weights",
            lambda v: len(v) == 5 and all(w >= 0 for w in v) and min(v[:2]) > 0,
            "five non-negative weights (eyes, nose, mouth corners) with both eye weights positive",
        ),
        ("data.checkpoint_every", _positive, "a positive number of images"),
        ("data.align.eye_distance", lambda v: 0.05 <= v <= 0.8, "a fraction in [0.05, 0.8]"),
        ("data.align.eye_height", lambda v: 0.1 <= v <= 0.9, "a fraction in [0.1, 0.9]"),
    ]


def _run_constraints() -> list[tuple[str, Callable[[Any], bool], str]]:
    """Devices, train.*, placement.* and tune.*."""
    return [
        ("*.device", _one_of("auto", "cpu", "cuda"), "auto, cpu or cuda"),
        ("train.precision", _one_of("auto", "fp32", "fp16", "bf16"), "auto, fp32, fp16 or bf16"),
        ("train.*_kimg", _positive, "a positive number of kimg"),
        ("train.grid_size", _positive, "a positive integer"),
        ("train.num_workers", _non_negative, "0 or more"),
        ("train.speed.cache_on_device", _one_of("auto", "on", "off"), "auto, on or off"),
        ("train.budget_minutes", _non_negative, "0 (the kimg budget alone) or minutes of training"),
        ("placement.gpus", _positive, "a positive number of processes per node"),
        ("placement.nnodes", _positive, "a positive number of nodes"),
        ("placement.gpu", lambda v: v >= -1, "-1 (every visible GPU) or a GPU index"),
        ("train.speed.check_every", _positive, "a positive number of steps"),
        ("train.speed.compile", _one_of("none", "default", "cudagraphs"), "none, default or cudagraphs"),
        ("tune.trials", _positive, "a positive number of trials"),
        ("tune.num_gen", _positive, "a positive number of images"),
        ("tune.kimg", _positive, "a positive number of kimg"),
        ("tune.snapshot_kimg", _positive, "a positive number of kimg"),
        ("tune.warmup_kimg", _non_negative, "0 or more kimg"),
        ("tune.startup_trials", _non_negative, "0 or more trials"),
    ]


def _evaluate_constraints() -> list[tuple[str, Callable[[Any], bool], str]]:
    """evaluate.*: extractors, sample counts, PPL, pictures."""
    return [
        (
            "evaluate.extractor",
            _one_of("auto", "inception", "fid_helper", "proxy"),
            "auto, inception, fid_helper or proxy",
        ),
        ("evaluate.pr_k", _positive, "a positive number of neighbours"),
        ("evaluate.ppl_samples", _positive, "a positive number of latent pairs"),
        ("evaluate.ppl_space", _one_of("auto", "z", "w"), "auto, z or w"),
        ("evaluate.ppl_sampling", _one_of("end", "full"), "end or full"),
        ("evaluate.ppl_epsilon", lambda v: 0 < v < 0.1, "a small positive step such as 0.0001"),
        ("evaluate.lpips", _one_of("vgg", "proxy"), "vgg or proxy"),
        ("evaluate.grid_size", _positive, "a positive integer"),
        (
            "evaluate.truncation_psis",
            lambda v: len(v) > 0 and all(0.0 <= p <= 2.0 for p in v),
            "a non-empty list of psi in [0, 2]",
        ),
        ("evaluate.truncation_rows", _positive, "a positive integer"),
        ("evaluate.interpolation_steps", lambda v: v >= 2, "at least 2"),
        ("evaluate.num_*", _positive, "a positive integer"),
        ("evaluate.snapshot_num_gen", _positive, "a positive integer"),
        ("evaluate.batch_size", _positive, "a positive integer"),
        ("evaluate.resize_workers", lambda v: v >= -1, "-1 (auto), 0 (in the main process) or a number of processes"),
        ("evaluate.fid_seeds", _positive, "a positive integer"),
    ]


def _model_constraints() -> list[tuple[str, Callable[[Any], bool], str]]:
    """models.<name>.*: budgets, optimisers, losses, schedules and arch sizes."""
    return [
        ("models.*.augment.mode", _one_of("ada", "fixed", "none"), "ada, fixed or none"),
        ("models.*.augment.p", lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
        ("models.*.augment.target", lambda v: 0.0 <= v <= 1.0, "a target sign mean in [0, 1]"),
        ("models.*.augment.interval", _positive, "a positive number of steps"),
        ("models.*.augment.kimg", _positive, "a positive number of kimg"),
        ("models.*.loss.latents", _one_of("per_phase", "per_step"), "per_phase or per_step"),
        ("models.*.kimg", _positive, "a positive number of kimg (the training budget)"),
        ("models.*.batch_size", _positive, "a positive integer"),
        ("models.*.lr_decay_kimg", _non_negative, "0 (constant lr) or the kimg of the final linear decay"),
        ("models.*.lr_*", _positive, "a positive learning rate"),
        ("models.*.betas_*", _betas, "two Adam betas in [0, 1)"),
        ("models.*.ema_kimg", _non_negative, "0 (off) or a positive half-life in kimg"),
        ("models.*.ema_rampup", _non_negative, "0 (off) or a positive ratio"),
        ("models.*.grad_clip_d", _non_negative, "0 (off) or a positive norm"),
        ("models.*.loss.type", _one_of("ns", "wgan_gp", "hinge"), "ns, wgan_gp or hinge"),
        ("models.*.loss.phase_order", _one_of("DG", "GD"), "DG (D phases first) or GD"),
        ("models.*.loss.style_mixing_prob", lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
        ("models.*.loss.*_every", _positive, "a positive number of steps"),
        ("models.*.loss.r1_gamma", _non_negative, "0 (off) or positive"),
        ("models.*.loss.pl_weight", _non_negative, "0 (off) or positive"),
        ("models.*.loss.gp_weight", _non_negative, "0 (off) or positive"),
        ("models.*.loss.drift", _non_negative, "0 (off) or positive"),
        ("models.*.loss.*_lambda", _non_negative, "0 (off) or positive"),
        ("models.*.loss.blur_*", _non_negative, "0 (off) or a positive value"),
        (
            "models.*.progressive.*_kimg",
            lambda v: all(k >= 0 for k in v),
            "a list of kimg >= 0 (one per level, the last repeats)",
        ),
        (
            "models.*.progressive.*_sizes",
            lambda v: all(b > 0 for b in v),
            "a list of positive batch sizes (one per level, the last repeats), or [] for the model's batch_size",
        ),
        ("models.*.progressive.lrs", lambda v: all(lr > 0 for lr in v), "a list of positive learning rates, or []"),
        ("models.*.progressive.initial_resolution", _power_of_two_in(4, 1024), "a power of two from 4 up"),
        ("models.*.arch.*_beta", lambda v: 0.0 <= v < 1.0, "a decay in [0, 1)"),
        ("models.*.arch.config", _one_of("t", "r"), "t or r"),
        ("models.*.arch.mlp_ratio", _positive, "a positive ratio"),
        ("models.*.arch.*_scale", _positive, "a positive number"),
        ("models.*.arch.*_multiplier", _positive, "a positive number"),
        ("models.*.arch.num_fp16_res", _non_negative, "0 (fp32 everywhere) or a number of resolutions"),
        ("models.*.arch.conv_clamp", _non_negative, "0 (off) or a positive clamp"),
        ("models.*.arch.margin", _non_negative, "0 or more pixels"),
        ("models.*.arch.window_layout", _one_of("masked", "split"), "masked or split"),
        ("models.*.arch.*", _positive, "a positive number"),
    ]


def constraints(models: tuple[str, ...]) -> list[tuple[str, Callable[[Any], bool], str]]:
    """(dotted key pattern, check, what is allowed); the first matching pattern of a key applies, so the
    sections keep their order (`*.device` before train.*, the catch-all `models.*.arch.*` last)."""
    model_choice = ("model", _one_of("all", *models), f"one of all, {', '.join(models)}")
    return [model_choice, *_data_constraints(), *_run_constraints(), *_evaluate_constraints(), *_model_constraints()]


# ------------------------------------------------------------------------------------------------
# Loading


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_keys_and_types(tree: dict, types: dict, where: Callable[[str], str], prefix: str = "") -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in types:
            raise UserError(f"unknown param '{where(dotted)}' in params.yaml; allowed keys here: {', '.join(types)}")
        kind = types[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise UserError(f"param '{where(dotted)}' must be a mapping of {', '.join(kind)}")
            _check_keys_and_types(value, kind, where, dotted + ".")
        elif kind == "mapping":
            if not isinstance(value, dict):
                raise UserError(f"param '{where(dotted)}' must be a mapping")
        elif not _fits(kind, value):
            raise UserError(f"param '{where(dotted)}' must be {_spoken(kind)}, got {value!r}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"param '{where(dotted)}' = {value!r} is invalid: must be a finite number")


def _check_complete(tree: dict, types: dict, prefix: str = "") -> None:
    for key, kind in types.items():
        if key not in tree:
            raise UserError(f"params.yaml has no '{prefix}{key}': restore it from git (git checkout params.yaml)")
        if isinstance(kind, dict):
            _check_complete(tree[key], kind, f"{prefix}{key}.")


def validate(params: dict, profile_keys: frozenset[str] = frozenset(), profile: str = "") -> dict:
    """Check merged params (profile applied); errors name `profiles.<profile>.<key>` for profile values."""

    def where(key: str) -> str:
        return f"profiles.{profile}.{key}" if key in profile_keys else key

    types = schema()
    _check_keys_and_types(params, types, where)
    _check_complete(params, types)
    rules = constraints(model_names())
    for key, value in flatten({k: v for k, v in params.items() if k != "profiles"}).items():
        for pattern, check, allowed in rules:
            if fnmatch.fnmatchcase(key, pattern):
                if not check(value):
                    raise UserError(f"param '{where(key)}' = {value!r} is invalid: must be {allowed}")
                break
    problem = next(cross_field_problems(params), None)
    if problem is not None:
        raise UserError(problem)
    return params


def cross_field_problems(params: dict) -> Iterator[str]:
    """Rules between params that no single value breaks, checked at `configure`, before any stage runs:
    one sentence each, naming the params and the fix."""
    placement = params["placement"]
    processes = placement["gpus"] * placement["nnodes"]
    if placement["nnodes"] > 1 and not placement["rdzv_endpoint"]:
        yield "placement.nnodes > 1 needs placement.rdzv_endpoint (host:port of node 0): set it"
    chosen = model_names() if params["model"] == "all" else (params["model"],)
    for model in chosen:
        model_params = params["models"][model]
        growing = (model_params.get("progressive") or {}).get("batch_sizes") or []
        key, sizes = (
            (f"models.{model}.progressive.batch_sizes", growing)
            if growing
            else (f"models.{model}.batch_size", [model_params["batch_size"]])
        )
        for size in sizes:
            if size % processes:
                yield (
                    f"{key} = {size} does not split over placement.gpus x placement.nnodes = {processes} "
                    f"processes: use a multiple of {processes}, or fewer processes"
                )
    eval_params = params["evaluate"]
    fewest = min(eval_params["num_gen"], eval_params["num_ref"])
    if eval_params["pr_k"] >= fewest:
        yield (
            f"evaluate.pr_k = {eval_params['pr_k']} needs more than {eval_params['pr_k']} images per set, "
            f"but evaluate.num_gen/num_ref give {fewest}: lower pr_k or raise both"
        )


def shadowed_edits(path: str | Path, committed: dict | None) -> list[str]:
    """Values edited in params.yaml (against its committed version) that the active profile overrides, so
    that the edit has no effect: one sentence each, naming where to make the change instead."""
    if committed is None:
        return []
    raw = read_yaml(path)
    profile = raw.get("profile", "study")
    override = flatten((raw.get("profiles") or {}).get(profile) or {})
    current, before = flatten({k: v for k, v in raw.items() if k != "profiles"}), flatten(committed)
    return [
        f"params.yaml sets {key}={current[key]!r} (committed: {before.get(key)!r}), but profile '{profile}' sets "
        f"profiles.{profile}.{key}={override[key]!r}, which wins: change that, or use profile: study"
        for key in sorted(override)
        if key in current and key in before and current[key] != before[key] and current[key] != override[key]
    ]


def committed_params(path: str | Path = DEFAULT_PATH) -> dict | None:
    """params.yaml as git's HEAD has it, or None outside a git checkout (nothing to compare with)."""
    import subprocess

    try:
        text = subprocess.run(
            ["git", "show", f"HEAD:{Path(path).as_posix()}"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else None


def load_params(path: str | Path = DEFAULT_PATH, overrides: dict | None = None) -> dict:
    """Read params.yaml, merge `profiles[profile]` (and `overrides`, for tests) and validate."""
    raw = read_yaml(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    profile = raw.get("profile", "study")
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict) or profile not in profiles:
        choices = ", ".join(profiles) if isinstance(profiles, dict) else "none"
        raise UserError(f"param 'profile' = {profile!r} is invalid: must be one of {choices}")
    override = profiles[profile] or {}
    if not isinstance(override, dict):
        raise UserError(f"param 'profiles.{profile}' must be a mapping of params to override")
    for name in override:
        if name in ("profile", "profiles"):
            raise UserError(f"param 'profiles.{profile}.{name}' is not allowed: a profile cannot choose profiles")
    merged = deep_merge(raw, override)
    return validate(merged, frozenset(flatten(override)), profile)
