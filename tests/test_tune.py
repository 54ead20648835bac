"""python -m facegan.tune: Optuna studies whose trials are DVC experiments, pruned from their FID-vs-kimg points."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from facegan import handoff, tune
from facegan.errors import UserError
from facegan.report.render import tune_section
from tests.helpers import QUEUE_PROFILE, dvc, git_project, project_env, set_params, study_model

DCGAN = study_model("dcgan")


@pytest.mark.parametrize(
    "space, message",
    [
        ({}, "tune.space has no search space for dcgan"),
        ({"dcgan": {"lr": ["log", 1e-4, 1e-2]}}, "models.dcgan has no key 'lr'"),
        ({"dcgan": {"arch": ["log", 1, 2]}}, "is not a number"),
        ({"dcgan": {"lr_g": [1e-4, 1e-2]}}, "write [log, low, high]"),
        ({"dcgan": {"lr_g": ["log", 0.0, 1e-2]}}, "a log range needs a positive low bound"),
        ({"dcgan": {"lr_g": ["uniform", 1e-2, 1e-4]}}, "low < high"),
        ({"dcgan": {"batch_size": ["choice", 32, 48.5]}}, "is an integer, so its values must be too"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_the_key(space, message):
    with pytest.raises(UserError) as err:
        tune.parse_space("dcgan", space, DCGAN)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_space_samples_the_types_of_the_model_section():
    dims = tune.parse_space(
        "dcgan",
        {"dcgan": {"lr_g": ["log", 1e-4, 1e-2], "batch_size": ["choice", 32, 64], "loss.r1_every": ["uniform", 1, 8]}},
        DCGAN,
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = {d.key: d.suggest(trial) for d in dims}
    assert isinstance(values["lr_g"], float) and 1e-4 <= values["lr_g"] <= 1e-2
    assert values["batch_size"] in (32, 64) and isinstance(values["loss.r1_every"], int)


def test_a_trial_setting_the_active_profile_overrides_is_written_under_the_profile():
    """Otherwise `-S models.dcgan.kimg=...` would be shadowed by profiles.demo.models.dcgan.kimg and every trial
    would train the demo's budget."""
    raw = {"profile": "demo", "profiles": {"demo": {"models": {"dcgan": {"kimg": 96}}}}}
    settings = tune.trial_settings("dcgan", {"kimg": 5.0, "snapshot_kimg": 1.0}, {"lr_g": 0.001})
    flags = tune.placed(raw, settings)
    assert flags["profiles.demo.models.dcgan.kimg"] == 5.0 and flags["models.dcgan.lr_g"] == 0.001
    assert "models.dcgan.kimg" not in flags and flags["model"] == "dcgan"
    assert tune.set_flag("models.dcgan.lr_g", 0.001) == "models.dcgan.lr_g=0.001"


WRITER = """
import sys, time
from pathlib import Path
folder = Path(sys.argv[1])
for i in range(10):
    (folder / f"kimg{i:08.2f}.pt").write_bytes(b"x")
    time.sleep(0.3)
time.sleep(120)
"""


def test_a_trial_worse_than_the_median_at_a_snapshot_is_stopped_there(tmp_path):
    """Optuna's median pruner on the live FID-vs-kimg points: an earlier trial reached FID 10 at every
    snapshot; this one's FID is 12 at each, so it is stopped at its first snapshot past the warmup (the
    second), long before its process would have ended, even when the poll finds several snapshots at once,
    and even when tune itself runs as a shell's background job (Ctrl-C ignored, which children inherit)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome, seconds, watch = prune_a_trial(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert outcome == "pruned" and seconds < 30
    assert watch.points == {0.0: 12.0, 1.0: 12.0}


def prune_a_trial(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    study.add_trial(optuna.trial.create_trial(value=10.0, intermediate_values={i: 10.0 for i in range(10)}))
    folder = tmp_path / "snapshots"
    folder.mkdir()
    watch = tune.Watch("dcgan", since=time.time() - 1, folders=(folder,))
    started = time.perf_counter()
    outcome = tune.run_trial(
        [sys.executable, "-c", WRITER, str(folder)],
        study.ask(),
        watch,
        lambda snap: (float(snap.stem.removeprefix("kimg")), 12.0),
        1.0,
        tmp_path / "trial.log",
    )
    return outcome, time.perf_counter() - started, watch


def test_a_failed_trial_keeps_its_last_error_line(tmp_path):
    study = optuna.create_study()
    watch = tune.Watch("dcgan", since=time.time(), folders=(tmp_path,))
    command = [sys.executable, "-c", "import sys; print('training...'); sys.exit('error: disk full: free space')"]
    outcome = tune.run_trial(command, study.ask(), watch, lambda p: (0.0, 0.0), 1.0, tmp_path / "t.log")
    assert outcome == "fail" and tune.last_error(tmp_path / "t.log") == "error: disk full: free space"


def test_three_trials_of_a_tiny_dcgan_are_dvc_experiments_and_the_best_reaches_the_report(tmp_path):
    """The documented flow on CPU: `python -m facegan.tune dcgan` runs 3 trials (each `dvc exp run
    train-dcgan` with its sampled lrs and the study's budget), scores them from their snapshots, keeps the
    complete ones as DVC experiments, writes study.json, best.yaml and the Optuna plots, puts params.yaml
    back, and resumes the study from study.db when run again."""
    project = git_project(tmp_path / "study", ("dcgan", "pggan"), QUEUE_PROFILE)
    set_params(
        project,
        **{
            "tune.trials": 3,
            "tune.kimg": 0.096,
            "tune.snapshot_kimg": 0.048,
            "tune.num_gen": 8,
            "tune.warmup_kimg": 0.0,
            "tune.startup_trials": 1,
            "tune.space": {"dcgan": {"lr_g": ["log", 1e-4, 1e-2], "lr_d": ["log", 1e-4, 1e-2]}},
        },
    )
    subprocess.run(["git", "commit", "-qam", "tune settings"], cwd=project, check=True)
    params_before = (project / "params.yaml").read_text()
    env = project_env(project)
    done = subprocess.run(
        [sys.executable, "-m", "facegan.tune", "dcgan"], cwd=project, env=env, text=True, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = handoff.TuneStudy.read(project / "tune/dcgan/study.json")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.points and t.points[0].kimg == 0.0 for t in study.trials)  # kimg 0 onwards, as they trained
    complete = [t for t in study.trials if t.state == "complete"]
    assert complete and all([p.kimg for p in t.points] == [0.0, 0.048, 0.096] for t in complete)
    best = min(complete, key=lambda t: t.fid)
    assert (study.best_number, study.best_fid, study.best_params) == (best.number, best.fid, best.params)
    assert all(1e-4 <= v <= 1e-2 for v in best.params.values())
    experiments = set(dvc(project, "exp", "list", "--name-only").split())
    assert {t.experiment for t in complete} <= experiments
    assert not any(e.endswith(f"-{t.number}") for t in study.trials if t.state != "complete" for e in experiments)
    best_yaml = yaml.safe_load((project / "tune/dcgan/best.yaml").read_text())
    assert best_yaml == {"models": {"dcgan": best.params}}
    assert (project / "params.yaml").read_text() == params_before  # the workspace is put back
    for plot in study.plots:
        assert (project / "tune/dcgan" / plot).stat().st_size > 1000
    # the report's section: the best trial against the params.yaml values, and the plots
    section = tune_section(["dcgan", "pggan"], tmp_path, project / "tune")
    assert f"| dcgan | {len(complete)} / " in section and "lr_g 0.0002 → " in section
    assert (tmp_path / "tune_dcgan_history.png").exists()
    # resumed: one more trial joins the same study
    again = subprocess.run(
        [sys.executable, "-m", "facegan.tune", "dcgan", "--trials", "1"],
        cwd=project,
        env=env,
        text=True,
        capture_output=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((project / "tune/dcgan/study.json").read_text())
    assert [t["number"] for t in resumed["trials"]] == [0, 1, 2, 3]
