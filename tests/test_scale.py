"""The study at any scale: time budgets, N processes from the same DVC stage, six models queued side by side."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from facegan.data.cache import CacheWriter
from facegan.data.synthetic import render_face
from facegan.training import checkpoint
from facegan.training.loop import RunConfig, train
from tests.helpers import study_model, study_train

REPO = Path(__file__).resolve().parents[1]
TRAIN = study_train(
    device="cpu",
    checkpoint_kimg=0.032,
    snapshot_kimg=100.0,
    sample_kimg=100.0,
    grid_size=2,
    num_workers=0,
    deterministic=True,
    log_kimg=0.016,
)
DCGAN = study_model(
    "dcgan", kimg=0.4, batch_size=8, arch={"z_dim": 8, "g_channels": 8, "d_channels": 8, "max_channels": 16}
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    writer = CacheWriter(tmp_path_factory.mktemp("cache") / "faces", 16, 24)
    for i in range(24):
        writer.add(render_face(0, i, 16))
    return writer.finish({"source": "synthetic", "synthetic": True})


def test_a_time_budget_ends_the_run_at_the_first_checkpoint_past_it_and_resume_keeps_counting(cache_dir, tmp_path):
    """train.budget_minutes: a finished run stopped by time, not kimg; the time spent before an interruption
    counts after the resume (a budget of ~0 s: every run ends at its first checkpoint, step 4)."""
    budget = dict(TRAIN, budget_minutes=1e-7)
    cfg = RunConfig(model="dcgan", model_params=DCGAN, train=budget, seed=1, resolution=16)
    stats = train(cfg, cache_dir, tmp_path / "a" / "run", tmp_path / "a" / "ckpt")
    assert stats.stopped_by == "budget" and stats.steps == 4 and stats.kimg == pytest.approx(0.032)
    assert (tmp_path / "a/run/G_ema.pt").exists() and len(list((tmp_path / "a/run/snapshots").glob("*.pt"))) == 2
    # interrupted at step 2 without a budget, then resumed with a budget the first part already spent: the
    # resumed run stops at its first checkpoint (step 4), and its time includes the first part's
    cfg.train = dict(TRAIN)
    assert train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt", stop_after_kimg=0.016) is None
    before = checkpoint.load(next((tmp_path / "b" / "ckpt").rglob("last.pt")))["train_seconds"]
    cfg.train = dict(TRAIN, budget_minutes=before / 60 / 2)
    resumed = train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt")
    assert resumed.stopped_by == "budget" and resumed.steps == 4 and resumed.train_seconds > before


def scratch_project(root: Path, profile: dict) -> Path:
    """A copy of the project's code and pipeline with `profile` as its demo profile, under DVC (no git)."""
    for folder in ("facegan", "models", "stages"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"], params["profiles"]["demo"] = "demo", profile
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(root, "init", "--no-scm", "-q")
    return root


def dvc(project: Path, *args: str) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # stage commands run `python`
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH=str(project), PATH=path)
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


TINY_PROFILE = {
    "model": "pggan",
    "data": {"source": "synthetic", "num_faces": 32, "resolution": 32, "synthetic_images": 32},
    "train": {
        "device": "cpu",
        "checkpoint_kimg": 0.064,
        "snapshot_kimg": 100.0,
        "sample_kimg": 100.0,
        "grid_size": 2,
        "num_workers": 0,
        "log_kimg": 0.032,
        "deterministic": True,
    },
    "models": {
        "pggan": {
            "kimg": 0.096,
            "batch_size": 8,
            "arch": {"z_dim": 8, "fmap_base": 32, "fmap_max": 8},
            "progressive": {"stable_kimg": [0.016], "fade_kimg": [0.008], "batch_sizes": []},
        }
    },
}


def set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_two_gloo_processes_through_dvc_repro_train_the_weights_of_one(tmp_path):
    """placement.gpus=2: DVC runs the train stage once, which relaunches itself under torchrun with two gloo
    processes on the CPU; the result equals the single-process run's (the same global batch, split)."""
    project = scratch_project(tmp_path / "project", dict(TINY_PROFILE, model="pggan"))
    set_params(project, model="pggan", **{"placement.gpus": 2})
    dvc(project, "repro", "train@pggan")
    two = checkpoint.load(project / "runs/pggan/G_ema.pt")["G_ema"]
    assert json.loads((project / "runs/pggan/train_stats.json").read_text())["world_size"] == 2
    set_params(project, **{"placement.gpus": 1})
    dvc(project, "repro", "configure")  # placement is no dependency of train@: its cached result stays valid...
    status = json.loads(dvc(project, "status", "--json", "train@pggan"))
    assert status == {}  # ...so DVC would reuse it; train again to compare with one process
    dvc(project, "repro", "-f", "-s", "train@pggan")
    one = checkpoint.load(project / "runs/pggan/G_ema.pt")["G_ema"]
    assert json.loads((project / "runs/pggan/train_stats.json").read_text())["world_size"] == 1
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key


QUEUE_PROFILE = {
    **{key: value for key, value in TINY_PROFILE.items() if key != "model"},  # `-S model=...` must win
    "evaluate": {
        "extractor": "proxy",
        "lpips": "proxy",
        "num_gen": 16,
        "num_ref": 16,
        "snapshot_num_gen": 16,
        "ppl_samples": 8,
        "batch_size": 8,
        "grid_size": 2,
        "interpolation_steps": 3,
    },
    "models": {
        "dcgan": {"kimg": 0.064, "batch_size": 8, "arch": DCGAN["arch"]},
        "pggan": TINY_PROFILE["models"]["pggan"],
    },
}


def git_project(root: Path, models: tuple[str, ...], profile: dict) -> Path:
    """A git + DVC copy of the project that studies `models` only (its dvc.yaml generated for them)."""
    scratch_project(root, profile)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["models"] = {m: params["models"][m] for m in models}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.yaml").unlink()
    shutil.rmtree(root / ".dvc")
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-m", "facegan.pipeline"], cwd=root, env=env, check=True, capture_output=True)
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    dvc(root, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "study"], cwd=root, check=True)
    return root


def test_queued_single_model_experiments_are_reused_by_the_whole_study(tmp_path):
    """The documented flow: queue one experiment per model, each on its own GPU (placement.gpu, not part of the
    results' identity), run them side by side, then `dvc exp run -S model=all` restores every model's training
    and evaluation from DVC's run cache instead of computing them again."""
    project = git_project(tmp_path / "study", ("dcgan", "pggan"), QUEUE_PROFILE)
    for gpu, model in enumerate(("dcgan", "pggan")):
        dvc(project, "exp", "run", "--queue", "-S", f"model={model}", "-S", f"placement.gpu={gpu}")
    dvc(project, "exp", "run", "--run-all", "-j", "2")
    rows = json.loads(dvc(project, "exp", "show", "--json"))
    finished = [exp for row in rows for exp in row.get("experiments") or []]
    assert len(finished) == 2, rows
    log = dvc(project, "exp", "run", "-S", "model=all")
    for stage in ("train@dcgan", "train@pggan", "evaluate@dcgan", "evaluate@pggan"):
        assert f"Stage '{stage}' is cached" in log, log
    assert "Running stage 'report'" in log, log  # the report itself is new: it shows both models
    for model in ("dcgan", "pggan"):  # both trained (not skipped), by the queued experiments
        assert json.loads((project / f"runs/{model}/train_stats.json").read_text())["status"] == "trained"
