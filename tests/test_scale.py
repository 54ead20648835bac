"""The study at any scale: time budgets, N processes from the same DVC stage, six models queued side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from facegan import checkpoint
from facegan.data.cache import CacheWriter
from facegan.data.synthetic import render_face
from facegan.handoff import ModelView
from facegan.training.loop import train
from tests.helpers import (
    DCGAN_ARCH,
    QUEUE_PROFILE,
    TINY_PROFILE,
    cpu_train,
    dvc,
    git_project,
    scratch_project,
    set_params,
    study_model,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN = cpu_train(checkpoint_kimg=0.032)
DCGAN = study_model("dcgan", kimg=0.4, batch_size=8, arch=DCGAN_ARCH)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    writer = CacheWriter(tmp_path_factory.mktemp("cache") / "faces", 16, 24)
    for i in range(24):
        writer.add(render_face(0, i, 16))
    return writer.finish(source="synthetic", synthetic=True)


def test_a_time_budget_ends_the_run_at_the_first_checkpoint_past_it_and_resume_keeps_counting(cache_dir, tmp_path):
    """train.budget_minutes: a finished run stopped by time, not kimg; the time spent before an interruption
    counts after the resume (a budget of ~0 s: every run ends at its first checkpoint, step 4)."""
    budget = dict(TRAIN, budget_minutes=1e-7)
    cfg = ModelView.selected_run(model="dcgan", params=DCGAN, train=budget, seed=1, resolution=16)
    stats = train(cfg, cache_dir, tmp_path / "a" / "run", tmp_path / "a" / "ckpt")
    assert stats.stopped_by == "budget" and stats.steps == 4 and stats.kimg == pytest.approx(0.032)
    assert (tmp_path / "a/run/G_ema.pt").exists() and len(list((tmp_path / "a/run/snapshots").glob("*.pt"))) == 2
    # interrupted at step 2 without a budget, then resumed with a budget the first part already spent: the
    # resumed run stops at its first checkpoint (step 4), and its time includes the first part's
    cfg = cfg.replaced(train=dict(TRAIN))
    assert train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt", stop_after_kimg=0.016) is None
    before = checkpoint.load(next((tmp_path / "b" / "ckpt").rglob("last.pt")))["train_seconds"]
    cfg = cfg.replaced(train=dict(TRAIN, budget_minutes=before / 60 / 2))
    resumed = train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt")
    assert resumed.stopped_by == "budget" and resumed.steps == 4 and resumed.train_seconds > before


def test_two_gloo_processes_through_dvc_repro_train_the_weights_of_one(tmp_path):
    """placement.gpus=2: DVC runs the train stage once, which relaunches itself under torchrun with two gloo
    processes on the CPU; the result equals the single-process run's (the same global batch, split)."""
    project = scratch_project(tmp_path / "project", dict(TINY_PROFILE, model="pggan"))
    set_params(project, model="pggan", **{"placement.gpus": 2})
    dvc(project, "repro", "train-pggan")
    two = checkpoint.load(project / "runs/pggan/G_ema.pt")["G_ema"]
    assert json.loads((project / "runs/pggan/train_stats.json").read_text())["world_size"] == 2
    set_params(project, **{"placement.gpus": 1})
    dvc(project, "repro", "configure")  # placement is no dependency of train-pggan: its cached result stays valid...
    status = json.loads(dvc(project, "status", "--json", "train-pggan"))
    assert status == {}  # ...so DVC would reuse it; train again to compare with one process
    dvc(project, "repro", "-f", "-s", "train-pggan")
    one = checkpoint.load(project / "runs/pggan/G_ema.pt")["G_ema"]
    assert json.loads((project / "runs/pggan/train_stats.json").read_text())["world_size"] == 1
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key


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
    for stage in ("train-dcgan", "train-pggan", "evaluate-dcgan", "evaluate-pggan"):
        assert f"Stage '{stage}' is cached" in log, log
    assert "Running stage 'report'" in log, log  # the report itself is new: it shows both models
    for model in ("dcgan", "pggan"):  # both trained (not skipped), by the queued experiments
        assert json.loads((project / f"runs/{model}/train_stats.json").read_text())["status"] == "trained"


def test_several_nodes_meet_at_the_rendezvous_endpoint_and_one_process_is_not_relaunched():
    from facegan.errors import UserError
    from facegan.handoff import PlacementView
    from facegan.training.launch import relaunch_if_distributed, torchrun_command

    nodes = PlacementView(gpus=8, nnodes=2, rdzv_endpoint="node0:29500", gpu=-1)
    command = torchrun_command(nodes, "stages.train", ["stylegan2"])
    assert command[1:3] == ["-m", "torch.distributed.run"] and command[-3:] == ["-m", "stages.train", "stylegan2"]
    assert {"--nproc_per_node=8", "--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29500"} <= set(command)
    assert "--standalone" not in command
    with pytest.raises(UserError, match="needs placement.rdzv_endpoint"):
        torchrun_command(PlacementView(gpus=8, nnodes=2, rdzv_endpoint="", gpu=-1), "stages.train", ["stylegan2"])
    one = PlacementView(gpus=1, nnodes=1, rdzv_endpoint="", gpu=-1)
    assert relaunch_if_distributed(one, "stages.train", ["dcgan"]) is None  # the stage trains in its own process
