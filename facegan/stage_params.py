"""Each stage's effective params, resolved once by the `configure` stage.

params.yaml holds the study default, a `profile` and the profiles' overrides, and `load_params`
merges them. Were `profiles.<profile>` a DVC params dependency of every stage, changing one
model's demo setting would re-run every stage down to the MTCNN preprocessing. Instead
`configure` writes, per stage, the merged values that stage reads (runs/config/<view>.json, with
the shapes of facegan.handoff); each stage depends on its own file, and DVC re-runs exactly the
stages whose values changed. Stages read their params back from these files, so what DVC hashed
is what ran.

A model's view also says whether this experiment trains it (`model: all` or its name): going
from `model: all` to `model: styleswin` leaves styleswin's file unchanged, so its cached training
is reused, and changes the others' files, which then skip cheaply.

The views are typed (facegan.settings' classes), so a stage reads `view.params.loss.r1_gamma`; a
change to a rule in facegan/settings.py therefore makes every stage's code dependency stale. This
module does not import facegan.params (the YAML reading and merging, which only `configure` needs).
"""

from __future__ import annotations

from pathlib import Path

from facegan import handoff
from facegan.errors import UserError
from facegan.paths import CONFIG_DIR

DATA_VIEWS = {
    "download": handoff.DownloadView,
    "preprocess": handoff.PreprocessView,
    "reference_stats": handoff.ReferenceView,
    "evaluate": handoff.EvaluateView,
    "report": handoff.ReportView,
    "placement": handoff.PlacementView,
}


def config_file(view: str, config_dir: Path = CONFIG_DIR) -> Path:
    return config_dir / f"{view}.json"


def views(params: dict, notes: list[str] | None = None) -> dict[str, handoff.Handoff]:
    """Every view of merged, validated params: the data stages', then one per model. `notes` are
    warnings about the params (edits a profile overrides) that the report repeats."""
    models = list(params["models"])
    out: dict[str, handoff.Handoff] = {
        "download": handoff.DownloadView(seed=params["seed"], data=params["data"]),
        "preprocess": handoff.PreprocessView(data=params["data"]),
        "reference_stats": handoff.ReferenceView(resolution=params["data"]["resolution"], evaluate=params["evaluate"]),
        "evaluate": handoff.EvaluateView(seed=params["seed"], evaluate=params["evaluate"]),
        "placement": handoff.PlacementView(**params["placement"]),
        "report": handoff.ReportView(
            profile=params["profile"],
            model=params["model"],
            models=models,
            seed=params["seed"],
            data=params["data"],
            evaluate=params["evaluate"],
            loss_types={name: params["models"][name]["loss"]["type"] for name in models},
            notes=list(notes or []),
        ),
    }
    for name in models:
        chosen = params["model"] in ("all", name)
        out[name] = handoff.ModelView(
            model=name,
            selected=chosen,
            skip_reason="" if chosen else f"not selected (model={params['model']})",
            seed=params["seed"],
            resolution=params["data"]["resolution"],
            train=params["train"],
            params=params["models"][name],
        )
    return out


def write_views(params: dict, config_dir: Path = CONFIG_DIR, notes: list[str] | None = None) -> None:
    for view, values in views(params, notes).items():
        values.write(config_file(view, config_dir))


def _read(view: str, shape, config_dir: Path):
    path = config_file(view, config_dir)
    if not path.exists():
        raise UserError(f"{path} is missing: run `dvc repro configure` (or `python -m stages.configure`) first")
    return shape.read(path)


def load(view: str, config_dir: Path = CONFIG_DIR):
    """The view of a data stage (download, preprocess, reference_stats, evaluate, report)."""
    return _read(view, DATA_VIEWS[view], config_dir)


def load_model(model: str, config_dir: Path = CONFIG_DIR) -> handoff.ModelView:
    """A model's view; a model the study does not have is a one-line error."""
    if not config_file(model, config_dir).exists() and config_file("report", config_dir).exists():
        known = load("report", config_dir).models
        if model not in known:
            raise UserError(f"unknown model '{model}': the study's models are {', '.join(known)} (params.yaml models)")
    return _read(model, handoff.ModelView, config_dir)
