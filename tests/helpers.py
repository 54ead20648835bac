"""Helpers shared by test modules: params.yaml's study values, the one place defaults live."""

from __future__ import annotations

from pathlib import Path

from facegan.params import deep_merge, read_yaml

REPO = Path(__file__).resolve().parents[1]


def study_params() -> dict:
    return read_yaml(REPO / "params.yaml")


def study_arch(model: str, **changes) -> dict:
    """models.<model>.arch of the study, with `changes` applied."""
    return deep_merge(study_params()["models"][model]["arch"], changes)


def study_model(model: str, **changes) -> dict:
    """models.<model> of the study, with `changes` deep-merged (nested dicts are merged, not replaced)."""
    return deep_merge(study_params()["models"][model], changes)


def study_train(**changes) -> dict:
    return deep_merge(study_params()["train"], changes)
