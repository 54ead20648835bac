"""Params validation: bad values stop a stage with one line naming the key and what is allowed."""

import json
from pathlib import Path

import pytest

from facegan import stage_params
from facegan.errors import UserError
from facegan.params import load_params, model_names

MODEL_NAMES = model_names()

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
    assert demo["evaluate"]["extractor"] == study["evaluate"]["extractor"] == "auto"  # the real Inception
    assert demo["evaluate"]["fid_seeds"] >= 2  # FID carries a spread
    assert demo["models"]["dcgan"]["betas_g"] == study["models"]["dcgan"]["betas_g"]  # not overridden
    assert demo["models"]["dcgan"]["kimg"] < study["models"]["dcgan"]["kimg"]


def test_quick_profile_is_celeba_at_64px_an_hour_a_model_and_fid_on_10k(tmp_path):
    """Every model stops at its time budget, not its kimg cap, and the growing ones get to 64x64 early enough
    to train there (a quarter of the cap at most)."""
    from facegan import settings
    from facegan.training.progressive import growing_kimg

    quick = load(tmp_path, {"profile": "quick"})
    assert quick["data"]["source"] == "celeba" and quick["data"]["resolution"] == 64
    assert quick["train"]["budget_minutes"] == 60 and quick["evaluate"]["num_gen"] == 10000
    for name, model in quick["models"].items():
        if "progressive" in model:
            section = settings.model_settings_class(name).model_validate(model)
            assert growing_kimg(section.progressive, final_level=4) <= section.kimg / 4, name


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "biggan"}, "param 'model' = 'biggan' is invalid: must be one of all, dcgan"),
        (
            {"data": {"resolution": 100}},
            "param 'data.resolution' = 100 is invalid: must be a power of two from 32 to 512",
        ),
        ({"data": {"resolution": 1024}}, "must be a power of two from 32 to 512"),
        (
            {"models": {"dcgan": {"kimg": 0}}},
            "param 'models.dcgan.kimg' = 0 is invalid: must be a positive number of kimg",
        ),
        ({"models": {"pggan": {"kimg": -5.0}}}, "param 'models.pggan.kimg' = -5.0 is invalid"),
        ({"models": {"dcgan": {"lr_g": "fast"}}}, "param 'models.dcgan.lr_g' must be a number"),
        ({"models": {"dcgan": {"betas_g": [0.5, 1.5]}}}, "must be two Adam betas in [0, 1)"),
        ({"models": {"dcgan": {"dropout": 0.1}}}, "unknown param 'models.dcgan.dropout'"),
        (
            {"models": {"stylegan2": {"loss": {"r1_gama": 1.0}}}},
            "unknown param 'models.stylegan2.loss.r1_gama' in params.yaml; allowed keys here: type, phase_order",
        ),
        ({"models": {"dcgan": {"xflip": "yes"}}}, "param 'models.dcgan.xflip' must be true/false"),
        ({"train": {"xflip": True}}, "unknown param 'train.xflip'"),  # per model now
        ({"data": {"raw_dir": "elsewhere"}}, "param 'data.raw_dir' is no longer read: the source images are always in"),
        (
            {"models": {"stylegan2": {"augment": {"mode": "always"}}}},
            "param 'models.stylegan2.augment.mode' = 'always' is invalid: must be ada, fixed, cosine or none",
        ),
        ({"models": {"stylegan2": {"augment": {"target": 1.5}}}}, "must be a target sign mean in [0, 1]"),
        ({"models": {"dcgan": {"loss": {"latents": "one"}}}}, "must be per_phase or per_step"),
        (
            {"data": {"source": "imagenet"}},
            "param 'data.source' = 'imagenet' is invalid: must be one of celeba, url, folder, synthetic",
        ),
        ({"profile": "fast"}, "param 'profile' = 'fast' is invalid: must be one of study, quick, gpu-smoke, demo"),
        (
            {"profiles": {"demo": {"data": {"resolution": 48}}}, "profile": "demo"},
            "param 'profiles.demo.data.resolution' = 48 is invalid",
        ),
        (
            {"models": {"dcgan": {"kimg": float("inf")}}},
            "param 'models.dcgan.kimg' = inf is invalid: must be a finite number",
        ),
        (
            {"models": {"dcgan": {"arch": {"z_dim": 0}}}},
            "param 'models.dcgan.arch.z_dim' = 0 is invalid: must be a positive",
        ),
        ({"models": {"stylegan3": {"arch": {"config": "x"}}}}, "param 'models.stylegan3.arch.config' = 'x' is invalid"),
        ({"models": {"dcgan": {"batch_size": 16.0}}}, "param 'models.dcgan.batch_size' must be an integer"),
        ({"profiles": {"demo": {"data": {"typo": 1}}}, "profile": "demo"}, "unknown param 'profiles.demo.data.typo'"),
    ],
)
def test_bad_params_give_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        load(tmp_path, overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_missing_params_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="not found: run from the repository root"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndata: [unclosed\n")
    with pytest.raises(UserError, match=r"is not valid YAML at line 3, column 1") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("seed: 0\n", "seed: 0\nseed: 1\n", 1))
    with pytest.raises(UserError, match=r"duplicate key 'seed' \(line \d+, column 1\)"):
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
    assert _changed_views(tmp_path, {}, {"seed": 1}) == {"download", "evaluate", "report", *MODEL_NAMES}
    # the chosen model keeps its view (DVC reuses its training); the others switch to skipped
    assert _changed_views(tmp_path, {}, {"model": "styleswin"}) == set(MODEL_NAMES) - {"styleswin"} | {"report"}


def test_stage_reads_back_what_configure_wrote(tmp_path):
    params = load(tmp_path, {"profile": "demo"})
    stage_params.write_views(params, tmp_path / "config")
    view = stage_params.load_model("pggan", config_dir=tmp_path / "config")
    assert view.params.model_dump() == params["models"]["pggan"] and view.selected is True  # typed, same values
    assert view.params.progressive.batch_sizes == params["models"]["pggan"]["progressive"]["batch_sizes"]
    assert view.resolution == params["data"]["resolution"]
    assert stage_params.load("evaluate", config_dir=tmp_path / "config").evaluate.model_dump() == params["evaluate"]
    with pytest.raises(UserError, match="dvc repro configure"):
        stage_params.load("preprocess", config_dir=tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown model 'biggan': the study's models are dcgan, pggan"):
        stage_params.load_model("biggan", config_dir=tmp_path / "config")


def test_a_view_with_another_shape_is_refused(tmp_path):
    params = load(tmp_path, {"profile": "demo"})
    stage_params.write_views(params, tmp_path / "config")
    path = tmp_path / "config" / "dcgan.json"
    view = json.loads(path.read_text())
    view["resolution_reached"] = view.pop("resolution")
    path.write_text(json.dumps(view))
    with pytest.raises(
        UserError,
        match=r"dcgan.json does not have the shape of ModelView \(missing resolution; "
        r"unknown resolution_reached\).*dvc repro configure",
    ):
        stage_params.load_model("dcgan", config_dir=tmp_path / "config")


# every bounded probability, fraction, ratio or decay, and values on each wrong side of its bounds
OUT_OF_BOUNDS = {
    "data.mtcnn.min_confidence": [-0.1, 1.5],
    "data.align.eye_distance": [0.01, 0.9],
    "data.align.eye_height": [0.05, 0.95],
    "models.*.augment.p": [-0.1, 1.5],
    "models.*.augment.target": [-0.1, 1.5],
    "models.*.betas_*": [[0.5, 1.0], [-0.1, 0.9], [0.5]],
    "models.*.ema_rampup": [-0.1],
    "models.*.lr_decay_kimg": [-1.0],
    "models.*.loss.style_mixing_prob": [-0.1, 1.5],
    "models.*.arch.*_beta": [1.0, -0.1],
    "models.*.arch.mlp_ratio": [0.0, -1.0],
    "evaluate.truncation_psis": [[2.5], [-0.1], []],
    "evaluate.fid_inf_smallest": [0.0, 1.0],
    "models.*.cosine.beta2_final": [1.0, -0.1],
}


def test_every_probability_and_ratio_param_is_bounded_on_both_sides(tmp_path):
    """Through load_params, as `configure` runs it: each bad value stops with one line naming its key."""
    import fnmatch
    import re

    from facegan.params import flatten
    from facegan.settings import field_rules

    bounded = {
        key for key, allowed in field_rules().items() if re.search(r"probability|fraction|ratio|decay|\[0, 1", allowed)
    }
    unlisted = {key for key in bounded if not any(fnmatch.fnmatchcase(key, pattern) for pattern in OUT_OF_BOUNDS)}
    assert not unlisted, f"add {unlisted} to OUT_OF_BOUNDS"
    study = flatten(load(tmp_path, {}))
    for pattern, values in OUT_OF_BOUNDS.items():
        key = next(k for k in study if fnmatch.fnmatchcase(k, pattern))
        for value in values:
            override = value
            for part in reversed(key.split(".")):
                override = {part: override}
            with pytest.raises(UserError) as err:
                load(tmp_path, override)
            assert f"param '{key}' = {value!r} is invalid" in str(err.value), (key, value, str(err.value))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"placement": {"nnodes": 2}}, "placement.nnodes > 1 needs placement.rdzv_endpoint"),
        ({"placement": {"gpus": 3}, "model": "stylegan2"}, "models.stylegan2.batch_size = 32 does not split over"),
        (
            {"placement": {"gpus": 3}, "model": "pggan"},
            "models.pggan.progressive.batch_sizes = 128 does not split over placement.gpus x placement.nnodes = 3",
        ),
        ({"evaluate": {"pr_k": 50000}}, "evaluate.pr_k = 50000 needs more than 50000 images per set"),
        (
            {"models": {"stylegan2": {"augment": {"mode": "cosine"}}}},
            "models.stylegan2.augment.mode = cosine needs a cosine schedule, which only R3GAN has",
        ),
        ({"models": {"r3gan": {"loss": {"r1_every": 16}}}}, "models.r3gan.loss.type = rpgan applies R1 and R2 on"),
    ],
)
def test_rules_between_params_stop_configure_before_any_stage(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(tmp_path, overrides)


def test_a_batch_split_over_the_processes_passes(tmp_path):
    assert load(tmp_path, {"placement": {"gpus": 4}})["placement"]["gpus"] == 4


def test_the_batch_rule_counts_the_gpus_of_every_node(tmp_path):
    """Two nodes of 2 GPUs are 4 processes: StyleGAN2's batch of 32 splits, a batch of 6 does not (6 splits
    over the 2 GPUs of one node, so a rule that forgot the other node would let it through to torchrun)."""
    nodes = {"gpus": 2, "nnodes": 2, "rdzv_endpoint": "node0:29500"}
    assert load(tmp_path, {"placement": nodes, "model": "stylegan2"})["placement"]["nnodes"] == 2
    with pytest.raises(UserError, match=r"batch_size = 6 does not split over placement\.gpus x placement\.nnodes = 4"):
        load(tmp_path, {"placement": nodes, "model": "stylegan2", "models": {"stylegan2": {"batch_size": 6}}})


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_each_model_builds_from_exactly_the_keys_of_its_arch_section(tmp_path, model):
    """The arch keys are written once, in facegan.settings: the model's build reads each of them."""
    import inspect
    import re

    import models

    arch = load(tmp_path, {})["models"][model]["arch"]
    source = inspect.getsource(inspect.getmodule(models.get_spec(model).build))
    read = set(re.findall(r"\barch\.(\w+)", source))
    assert read == set(arch), f"models/{model}.py reads arch keys {sorted(read)}, its params have {sorted(arch)}"
    with pytest.raises(UserError, match=rf"^models\.{model}\.arch\.z_dim = 'wide' is invalid: "):
        models.build(model, {**arch, "z_dim": "wide"}, 32)
    with pytest.raises(UserError, match=rf"^models\.{model}\.arch\.z_dim = 0 is invalid: must be a positive number$"):
        models.build(model, {**arch, "z_dim": 0}, 32)
    with pytest.raises(UserError, match=rf"^models\.{model}\.arch\.depth: extra inputs are not permitted"):
        models.build(model, {**arch, "depth": 3}, 32)
