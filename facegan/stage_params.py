"""Each stage's effective params, resolved once by the `configure` stage.

params.yaml holds the study default, a `profile` and the profiles' overrides, and `load_params`
merges them. Were `profiles.<profile>` a DVC params dependency of every stage, changing one
model's demo setting would re-run every stage down to the MTCNN preprocessing. Instead
`configure` writes, per stage, the merged values that stage reads (runs/config/<view>.json);
each stage depends on its own file, and DVC re-runs exactly the stages whose values changed.
Stages read their params back from these files, so what DVC hashed is what ran.

A model's view also says whether this experiment trains it (`model: all` or its name): going
from `model: all` to `model: styleswin` leaves styleswin's file unchanged, so its cached training
is reused, and changes the others' files, which then skip cheaply.
"""
from __future__ import annotations

from pathlib import Path

from facegan.errors import UserError
from facegan.io import read_json, write_json
from facegan.params import MODEL_NAMES, deep_merge
from facegan.paths import CONFIG_DIR


def config_file(view: str, config_dir: Path = CONFIG_DIR) -> Path:
    return config_dir / f"{view}.json"


def views(params: dict) -> dict[str, dict]:
    """Every view of the merged params, each shaped like params.yaml (a subset of its keys)."""
    out = {"download": {"seed": params["seed"], "data": params["data"]},
           "preprocess": {"data": params["data"]},
           "reference_stats": {"evaluate": params["evaluate"]},
           "evaluate": {"seed": params["seed"], "evaluate": params["evaluate"]}}
    for name in MODEL_NAMES:
        chosen = params["model"] in ("all", name)
        out[name] = {"selected": chosen, "skip_reason": "" if chosen else f"not selected (model={params['model']})",
                     "seed": params["seed"], "train": params["train"],
                     "data": {"resolution": params["data"]["resolution"]}, "models": {name: params["models"][name]}}
    return out


def write_views(params: dict, config_dir: Path = CONFIG_DIR) -> None:
    for view, values in views(params).items():
        write_json(config_file(view, config_dir), values)


def load(*names: str, config_dir: Path = CONFIG_DIR) -> dict:
    """The named views merged into one params-shaped dict."""
    merged: dict = {}
    for name in names:
        path = config_file(name, config_dir)
        if not path.exists():
            raise UserError(f"{path} is missing: run `dvc repro configure` (or `python -m stages.configure`) first")
        merged = deep_merge(merged, read_json(path))
    return merged
