"""Params validation: bad values stop a stage with one line naming the key and what is allowed."""
from pathlib import Path

import pytest
import yaml

from facegan.errors import UserError
from facegan import stage_params
from facegan.params import MODEL_NAMES, SCHEMA_PATH, load_params

REPO = Path(__file__).resolve().parents[1]


def load(tmp_path, overrides):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return load_params(path, {"profile": "study", **overrides})


def test_shipped_params_are_the_full_study(tmp_path):
    params = load(tmp_path, {"profile": "study"})
    assert params["data"]["source"] == "celeba"
    assert params["data"]["num_faces"] == 50000 and params["data"]["resolution"] == 128
    assert set(params["models"]) == set(MODEL_NAMES)


def test_demo_profile_overrides_only_what_it_names(tmp_path):
    study = load(tmp_path, {"profile": "study"})
    demo = load(tmp_path, {"profile": "demo"})
    assert demo["data"]["source"] == "synthetic" and demo["data"]["resolution"] <= 64
    assert demo["evaluate"]["extractor"] == "proxy"
    assert demo["models"]["dcgan"]["lr_g"] == study["models"]["dcgan"]["lr_g"]  # not overridden
    assert demo["models"]["dcgan"]["kimg"] < study["models"]["dcgan"]["kimg"]


def test_schema_and_params_have_the_same_keys():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            if isinstance(value, dict) and key != "profiles":
                out |= keys(value, f"{prefix}{key}.")
            else:
                out.add(prefix + key)
        return out

    assert keys(schema) == keys(params)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "biggan"}, "param 'model' = 'biggan' is invalid: must be one of all, dcgan"),
    ({"data": {"resolution": 100}}, "param 'data.resolution' = 100 is invalid: must be a power of two from 32 to 512"),
    ({"data": {"resolution": 1024}}, "must be a power of two from 32 to 512"),
    ({"models": {"dcgan": {"kimg": 0}}}, "param 'models.dcgan.kimg' = 0 is invalid: must be a positive number of kimg"),
    ({"models": {"pggan": {"kimg": -5.0}}}, "param 'models.pggan.kimg' = -5.0 is invalid"),
    ({"models": {"dcgan": {"lr_g": "fast"}}}, "param 'models.dcgan.lr_g' must be a number"),
    ({"models": {"dcgan": {"betas_g": [0.5, 1.5]}}}, "must be two Adam betas in [0, 1)"),
    ({"models": {"dcgan": {"dropout": 0.1}}}, "unknown param 'models.dcgan.dropout'"),
    ({"train": {"xflip": "yes"}}, "param 'train.xflip' must be true/false"),
    ({"data": {"source": "imagenet"}}, "param 'data.source' = 'imagenet' is invalid: must be one of celeba, url, folder, synthetic"),
    ({"profile": "fast"}, "param 'profile' = 'fast' is invalid: must be one of study, demo"),
    ({"profiles": {"demo": {"data": {"resolution": 48}}}, "profile": "demo"}, "param 'data.resolution' = 48 is invalid"),
    ({"profiles": {"demo": {"data": {"typo": 1}}}, "profile": "demo"}, "unknown param 'profiles.demo.data.typo'"),
])
def test_bad_params_give_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        load(tmp_path, overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_missing_params_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="not found: run from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_params(path)


def _changed_views(tmp_path, before: dict, after: dict) -> set[str]:
    a, b = stage_params.views(load(tmp_path, before)), stage_params.views(load(tmp_path, after))
    return {name for name in a if a[name] != b[name]}


def test_a_model_setting_changes_only_that_models_view(tmp_path):
    demo = {"profile": "demo"}
    tweaked = {"profile": "demo", "profiles": {"demo": {"models": {"pggan": {"kimg": 31.0}}}}}
    assert _changed_views(tmp_path, demo, tweaked) == {"pggan"}
    assert _changed_views(tmp_path, {}, {"models": {"stylegan2": {"lr_g": 0.003}}}) == {"stylegan2"}


def test_seed_and_selection_leave_the_data_stages_alone(tmp_path):
    assert _changed_views(tmp_path, {}, {"seed": 1}) == {"download", "evaluate", *MODEL_NAMES}
    # the chosen model keeps its view (DVC reuses its training); the others switch to skipped
    assert _changed_views(tmp_path, {}, {"model": "styleswin"}) == set(MODEL_NAMES) - {"styleswin"}


def test_stage_reads_back_what_configure_wrote(tmp_path):
    params = load(tmp_path, {"profile": "demo"})
    stage_params.write_views(params, tmp_path / "config")
    view = stage_params.load("evaluate", "pggan", config_dir=tmp_path / "config")
    assert view["models"]["pggan"] == params["models"]["pggan"] and view["evaluate"] == params["evaluate"]
    assert view["selected"] is True and view["data"]["resolution"] == params["data"]["resolution"]
    with pytest.raises(UserError, match="dvc repro configure"):
        stage_params.load("preprocess", config_dir=tmp_path / "nowhere")
