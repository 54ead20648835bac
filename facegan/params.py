"""Load params.yaml, apply the selected profile, and validate the result.

params.yaml is the one place the study's values live; facegan.settings is the one place that says
what they may be: every section a class, every key a typed field with its rule beside it. What a
user or `dvc exp run -S` writes into params.yaml is checked against it here, once, at `configure`:
an unknown key, a value of another type or one its rule refuses is a one-line UserError that names
the key where it was written (the profile's key when the profile set it) and what is allowed (what is
wrong is facegan.problems', as for the hand-offs; `problem_line` words it for params.yaml). The
rules between params (a batch that must split over the processes, ...) follow, one sentence each.

The study's models are the fields of facegan.settings.ModelsSettings, in params.yaml's order: a new
model is a module in models/, a section in params.yaml and a class there (then `python -m
facegan.pipeline` regenerates dvc.yaml).
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import yaml

from facegan import settings
from facegan.errors import UserError
from facegan.problems import Problem, one_line

DEFAULT_PATH = Path("params.yaml")


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
# Checking: facegan.settings defines every key; its errors become one line naming the key


def model_names(path: str | Path = Path(__file__).resolve().parents[1] / DEFAULT_PATH) -> tuple[str, ...]:
    """The study's models: the sections of params.yaml's `models`, in its order (the report's row order)."""
    return tuple(read_yaml(path).get("models") or {})


def _value_at(tree: Any, loc: tuple) -> Any:
    for part in loc:
        tree = tree[part]
    return tree


def _section_at(loc: tuple) -> type[settings.Section] | None:
    """The settings class that holds the key at `loc` (None inside a free-form mapping)."""
    section: Any = settings.Settings
    for part in loc[:-1]:
        field = section.model_fields.get(part) if isinstance(part, str) else None
        annotation = None if field is None else field.annotation
        members = [a for a in typing.get_args(annotation) if a is not type(None)]  # a model's section is Optional
        annotation = members[0] if len(members) == 1 else annotation
        if not (isinstance(annotation, type) and issubclass(annotation, settings.Section)):
            return None
        section = annotation
    return section


RETIRED = {  # keys an older params.yaml may still hold -> why they went, and the fix
    "data.raw_dir": "the source images are always in data/raw, dvc.yaml's download output; delete the key",
}


def problem_line(problem: Problem, params: dict, where: Callable[[str], str]) -> str:
    """A param's problem as the one line a user reads: the key as written (`where`), and what is allowed."""
    key = problem.field
    if problem.kind == "missing":
        return f"params.yaml has no '{key}': restore it from git (git checkout params.yaml)"
    section = _section_at(problem.loc)
    if problem.kind == "unknown":
        if key in RETIRED:
            return f"param '{where(key)}' is no longer read: {RETIRED[key]}"
        allowed = ", ".join(section.model_fields) if section is not None else "none"
        return f"unknown param '{where(key)}' in params.yaml; allowed keys here: {allowed}"
    value = _value_at(params, problem.field_loc)
    if problem.kind == "rule":
        return f"param '{where(key)}' = {value!r} is invalid: must be {problem.must}"
    if problem.kind == "mapping":
        field = section.model_fields.get(str(problem.loc[-1])) if section is not None else None
        inner = getattr(field, "annotation", None)
        is_section = isinstance(inner, type) and issubclass(inner, settings.Section)
        keys = f" of {', '.join(inner.model_fields)}" if is_section else ""
        return f"param '{where(key)}' must be a mapping{keys}"
    return f"param '{where(key)}' must be {problem.must}, got {value!r}"


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


def validate(params: dict, profile_keys: frozenset[str] = frozenset(), profile: str = "") -> dict:
    """Check merged params (profile applied) against facegan.settings, then the rules between params;
    errors name `profiles.<profile>.<key>` for profile values. Returns the params as given (their values,
    and so the run keys that hash them, are untouched)."""

    def where(key: str) -> str:
        return f"profiles.{profile}.{key}" if key in profile_keys else key

    try:
        settings.Settings.model_validate(params)
    except pydantic.ValidationError as err:
        raise UserError(one_line(err, lambda problem: problem_line(problem, params, where))) from None
    models = tuple(params["models"])
    if params["model"] not in ("all", *models):
        choices = ", ".join(("all", *models))
        raise UserError(f"param '{where('model')}' = {params['model']!r} is invalid: must be one of {choices}")
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
    chosen = tuple(params["models"]) if params["model"] == "all" else (params["model"],)
    for model in chosen:
        model_params = params["models"][model]
        if model_params["augment"]["mode"] == "cosine" and "cosine" not in model_params:
            yield (
                f"models.{model}.augment.mode = cosine needs a cosine schedule, which only R3GAN has: "
                "use ada, fixed or none"
            )
        if model_params["loss"]["type"] == "rpgan" and model_params["loss"]["r1_every"] != 1:
            yield f"models.{model}.loss.type = rpgan applies R1 and R2 on every step: set loss.r1_every to 1"
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
