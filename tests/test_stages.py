"""Each stage script on tiny inputs, in the order DVC runs them, in a scratch project folder."""

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"source": "synthetic", "num_faces": 48, "resolution": 32, "synthetic_images": 48},
    "train": {"checkpoint_kimg": 0.064, "snapshot_kimg": 0.064, "sample_kimg": 0.064, "grid_size": 2, "num_workers": 0},
    "evaluate": {
        "extractor": "proxy",
        "lpips": "proxy",
        "ppl_samples": 8,
        "num_gen": 40,
        "num_ref": 48,
        "snapshot_num_gen": 24,
        "batch_size": 24,
        "fid_inf_points": 4,
        "fid_inf_smallest": 0.5,
        "dinov2": "stand_in",
        "dinov2_input": 28,
    },
    "models": {
        "dcgan": {
            "kimg": 0.128,
            "batch_size": 16,
            "arch": {"z_dim": 16, "g_channels": 8, "d_channels": 8, "max_channels": 16},
        }
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A scratch project whose params.yaml is the shipped one with a tiny profile selected."""
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"], params["model"] = "demo", "dcgan"
    params["profiles"]["demo"] = TINY
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def run_stage(project, monkeypatch, name, *args):
    import importlib

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", [f"stages/{name}.py", *args])
    module = importlib.import_module(f"stages.{name}")
    module.main()


@pytest.fixture(scope="module")
def pipeline(project):
    """Run configure -> download -> preprocess -> train -> reference_stats -> evaluate -> report once."""
    mp = pytest.MonkeyPatch()
    try:
        for stage, *args in [
            ("configure",),
            ("download",),
            ("preprocess",),
            ("train", "dcgan"),
            ("train", "pggan"),
            ("reference_stats",),
            ("evaluate", "dcgan"),
            ("evaluate", "pggan"),
            ("report",),
        ]:
            run_stage(project, mp, stage, *args)
    finally:
        mp.undo()
    return project


def test_download_and_preprocess_fill_the_cache(pipeline):
    from facegan.data.cache import FaceCache

    cache = FaceCache(pipeline / "data/faces")
    assert len(cache) == 48 and cache.resolution == 32
    assert cache.meta.source == "synthetic"
    manifest = (pipeline / "data/faces/manifest.csv").read_text().splitlines()
    assert len(manifest) == 49  # header + one row per kept face


def test_selection_trains_only_the_chosen_model(pipeline):
    assert json.loads((pipeline / "runs/config/dcgan.json").read_text())["selected"] is True
    assert json.loads((pipeline / "runs/config/pggan.json").read_text())["selected"] is False
    skipped = json.loads((pipeline / "runs/pggan/train_stats.json").read_text())
    assert skipped["status"] == "skipped" and "model=dcgan" in skipped["reason"]
    assert not (pipeline / "runs/pggan/G_ema.pt").exists()


def test_training_writes_weights_samples_snapshots_and_stats(pipeline):
    run = pipeline / "runs/dcgan"
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["status"] == "trained" and stats["steps"] == 8 and stats["kimg"] == pytest.approx(0.128)
    assert stats["img_per_s"] > 0 and stats["params_G"] > 0
    assert (run / "G_ema.pt").exists()
    snapshots = sorted(p.name for p in (run / "snapshots").glob("*.pt"))
    assert snapshots == ["kimg00000.00.pt", "kimg00000.06.pt", "kimg00000.13.pt"]  # the untrained G, then every 0.064
    assert len(list((run / "samples").glob("*.png"))) >= 2


def test_evaluate_writes_labelled_metrics(pipeline):
    metrics = json.loads((pipeline / "evals/dcgan/metrics.json").read_text())
    assert metrics["label_key"] == "proxy"
    fid, kid, knn, dino = metrics["fid"], metrics["kid"], metrics["knn"], metrics["fd_dinov2"]
    assert fid["mean"] > 0 and np.isfinite(fid["mean"])
    assert metrics["num_gen"] == 40 and metrics["num_ref"] == 48
    curve = json.loads((pipeline / "evals/dcgan/fid_vs_kimg.json").read_text())
    assert [p["kimg"] for p in curve] == pytest.approx([0.0, 0.064, 0.128])  # the curve starts untrained
    assert fid["start"] == curve[0]["fid"] and fid["start_n"] == 24

    # the noise floor at num_gen: FID between two disjoint sets of 40 real faces... the cache holds 48, so 24
    meta = json.loads((pipeline / "data/reference/meta.json").read_text())
    assert metrics["floor"] == meta["floors"]["40"] and metrics["floor"]["n"] == 24
    assert set(meta["floors"]) == {"24", "40"} and meta["floors"]["24"]["n"] == 24
    assert json.loads((pipeline / "evals/pggan/metrics.json").read_text())["status"] == "skipped"
    # what `dvc exp show` lists: a few numbers per model, nothing for a skipped one
    summary = json.loads((pipeline / "metrics/dcgan.json").read_text())
    assert summary == {
        "fid": round(fid["mean"], 4),
        "fid_std": round(fid["std"], 4),
        "fid_inf": round(fid["infinity"], 4),
        "kid": round(kid["value"], 6),
        "fd_dinov2": round(dino["mean"], 4),
        "precision": round(knn["precision"], 4),
        "recall": round(knn["recall"], 4),
        "density": round(knn["density"], 4),
        "coverage": round(knn["coverage"], 4),
        "ppl": round(metrics["ppl"]["value"], 3),
        "kimg": 0.128,
        "train_hours": summary["train_hours"],
    }
    assert set(json.loads((pipeline / "metrics/pggan.json").read_text()).values()) == {None}
    # the newer metrics, each with its n: FID-infinity from 4 counts of the 40, FD-DINOv2 (the labelled stand-in)
    assert list(fid["by_n"]) == ["20", "26", "33", "40"] and list(kid["by_n"]) == ["20", "33", "40"]
    assert dino["label_key"] == "dinov2_stand_in" and dino["mean"] > 0
    assert dino["floor"] == meta["dinov2"]["floors"]["40"]
    assert 0 <= knn["coverage"] <= 1 and knn["density"] >= 0
    assert meta["chain"]["extractor"] == "proxy" and meta["chain"]["resolution"] == 32
    # the k-NN metrics' real-vs-real range at their n (the report's flags read it), over 5 halvings of 2 x 24 faces
    knn = meta["floors"]["40"]["knn"]
    assert knn["k"] == 3 and knn["splits"] == 5 and meta["floors"]["24"]["knn"] is None
    for name in ("precision", "recall", "coverage"):
        assert 0 < knn[name]["low"] <= knn[name]["high"] <= 1, name
    assert knn["recall"]["low"] < 1 and knn["coverage"]["low"] < 1  # disjoint halves: no half covers the other
    assert knn["spread_ratio"]["low"] <= 1.0 <= 1.5 * knn["spread_ratio"]["high"]


def test_report_table_matches_metrics_files(pipeline):
    report = (pipeline / "reports/comparison.md").read_text()
    metrics = json.loads((pipeline / "evals/dcgan/metrics.json").read_text())
    stats = json.loads((pipeline / "runs/dcgan/train_stats.json").read_text())
    row = next(line for line in report.splitlines() if line.startswith("| dcgan |"))
    from facegan.report.render import metric

    assert f"{metric(metrics['fid']['mean'])} (n=40×1) (proxy)" in row
    assert f"{stats['img_per_s']:.1f}" in row
    assert "synthetic" in report.lower() and "proxy" in report.lower()
    assert (pipeline / "reports/figures/dcgan_samples.png").exists()
    for name in ("pggan", "stylegan", "stylegan2", "stylegan3", "styleswin"):
        assert any(line.startswith(f"| {name} |") for line in report.splitlines()), name


def test_evaluate_without_inception_weights_names_the_fix(pipeline, monkeypatch, capsys):
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["profiles"]["demo"]["evaluate"]["extractor"] = "inception"
    params["evaluate"]["inception_weights"] = "nowhere/inception-2015-12-05.pt"
    scratch = pipeline / "scratch_no_weights"
    scratch.mkdir(exist_ok=True)
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))
    (scratch / "data").mkdir(exist_ok=True)
    if not (scratch / "data/faces").exists():
        (scratch / "data/faces").symlink_to(pipeline / "data/faces")
    run_stage(scratch, monkeypatch, "configure")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(scratch, monkeypatch, "reference_stats")
    assert exit_info.value.code == 2
    assert "nowhere/inception-2015-12-05.pt" in capsys.readouterr().err


def test_interrupted_training_resumes_from_its_checkpoint(project, tmp_path, monkeypatch):
    import torch

    from facegan import checkpoint, stage_params
    from facegan.data.cache import FaceCache
    from facegan.handoff import ModelView
    from facegan.training.loop import train
    from facegan.training.run_files import run_identity

    monkeypatch.chdir(project)
    run_stage(project, monkeypatch, "configure")
    view = stage_params.load_model("dcgan")
    cfg = ModelView.selected_run(model="dcgan", params=view.params, train=view.train, seed=view.seed, resolution=32)
    ckpt_root = tmp_path / "checkpoints"
    first = train(cfg, project / "data/faces", tmp_path / "run", ckpt_root, stop_after_kimg=0.064)
    assert first is None
    saved = checkpoint.load(
        checkpoint.checkpoint_dir(
            "dcgan", run_identity(cfg, FaceCache(project / "data/faces").fingerprint, torch.float32), ckpt_root
        )
        / "last.pt"
    )
    assert saved["step"] == 4
    stats = train(cfg, project / "data/faces", tmp_path / "run", ckpt_root)
    assert stats.steps == 8
    # the first half's log entry survives: the run continued rather than starting over
    assert stats.history[0].step == 4 and stats.history[-1].step == 8


def test_evaluate_refuses_reference_statistics_of_another_resolution_or_cache(pipeline, monkeypatch, capsys):
    """A cache at one resolution, statistics of another (or of other faces): one line, exit 2, no FID."""
    meta_path = pipeline / "data/reference/meta.json"
    original = meta_path.read_text()
    try:
        for change, expected in [
            ({"resolution": 64}, "reference statistics were computed at 64px but data.resolution=32"),
            ({"cache_fingerprint": "ffffffffffffffff"}, "but the reference statistics are of cache ffffffffffffffff"),
            (
                {"chain": {**json.loads(original)["chain"], "resize": "PIL bilinear to 299x299"}},
                "reference statistics come from another feature chain (resize: 'PIL bilinear to 299x299'",
            ),
            ({"dinov2": None}, "the reference statistics hold DINOv2 features of none, evaluate.dinov2 asks for"),
        ]:
            meta_path.write_text(json.dumps({**json.loads(original), **change}))
            with pytest.raises(SystemExit) as exit_info:
                run_stage(pipeline, monkeypatch, "evaluate", "dcgan")
            assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    finally:
        meta_path.write_text(original)


def test_a_corrupt_snapshot_stops_evaluate_before_any_metric(pipeline, monkeypatch, capsys):
    """Every input is read first: a truncated snapshot costs no FID/PPL work and names train-<model>."""
    from facegan.metrics import evaluate

    snapshot = pipeline / "runs/dcgan/snapshots/kimg00000.06.pt"
    original = snapshot.read_bytes()

    def metrics_ran(*args, **kwargs):
        raise AssertionError("a metric ran before the inputs were checked")

    monkeypatch.setattr(evaluate, "feature_metrics", metrics_ran)
    try:
        snapshot.write_bytes(original[: len(original) // 2])
        with pytest.raises(SystemExit) as exit_info:
            run_stage(pipeline, monkeypatch, "evaluate", "dcgan")
    finally:
        snapshot.write_bytes(original)
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert exit_info.value.code == 2
    assert "kimg00000.06.pt cannot be read" in line and "dvc checkout --force train-dcgan" in line, line


def test_evaluate_reads_each_input_once_so_a_replaced_run_cannot_mix_into_its_numbers(pipeline, monkeypatch):
    """A new training of dcgan once replaced runs/dcgan while its evaluation ran: metrics/dcgan.json paired the
    old generator's FID with the new run's kimg, and the curve came from the new snapshots. DVC also clears a
    stage's outputs before running it. Here runs/dcgan is swapped for another run right after the first metric:
    every number still comes from the run the evaluation started on."""
    import shutil

    from facegan.metrics import evaluate

    run, kept = pipeline / "runs/dcgan", pipeline / "runs/dcgan.kept"
    before = json.loads((pipeline / "evals/dcgan/fid_vs_kimg.json").read_text())
    real_feature_metrics = evaluate.feature_metrics

    def replaced_after_the_first_metric(*args, **kwargs):
        sets = real_feature_metrics(*args, **kwargs)
        shutil.copytree(run, kept)
        stats = json.loads((run / "train_stats.json").read_text())
        shutil.rmtree(run / "snapshots")
        (run / "snapshots").mkdir()
        (run / "train_stats.json").write_text(json.dumps({**stats, "kimg": 3.008}))
        return sets

    monkeypatch.setattr(evaluate, "feature_metrics", replaced_after_the_first_metric)
    try:
        run_stage(pipeline, monkeypatch, "evaluate", "dcgan")
    finally:
        shutil.rmtree(run)
        kept.rename(run)
    assert json.loads((pipeline / "metrics/dcgan.json").read_text())["kimg"] == 0.128
    after = json.loads((pipeline / "evals/dcgan/fid_vs_kimg.json").read_text())
    assert [p["kimg"] for p in after] == [p["kimg"] for p in before] == pytest.approx([0.0, 0.064, 0.128])


def test_a_failed_evaluation_publishes_neither_of_its_two_outputs(pipeline, monkeypatch):
    """evals/<model> and metrics/<model>.json go out together: a failure while writing leaves both as they were."""
    from facegan import handoff

    files = [pipeline / "evals/dcgan/metrics.json", pipeline / "metrics/dcgan.json"]
    before = [f.read_bytes() for f in files]

    def cut(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "metrics/dcgan.json")

    monkeypatch.setattr(handoff.ModelSummary, "write", cut)
    with pytest.raises(SystemExit):
        run_stage(pipeline, monkeypatch, "evaluate", "dcgan")
    assert [f.read_bytes() for f in files] == before
    assert not [p for p in (pipeline / "evals").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_interrupted_evaluation_says_it_starts_over(pipeline, monkeypatch, capsys):
    """Evaluate keeps nothing of an interrupted run: its Ctrl-C line must not promise a resume."""
    import stages.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages.evaluate, "evaluate_run", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(pipeline, monkeypatch, "evaluate", "dcgan")
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert (
        exit_info.value.code == 130 and line == "error: evaluate-dcgan stopped: interrupted; re-run it: it starts over"
    )


def test_a_batch_that_does_not_split_over_the_processes_stops_configure(project, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "p"
    scratch.mkdir()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["placement"]["gpus"] = 3
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_info:
        run_stage(scratch, monkeypatch, "configure")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line == (
        "error: models.dcgan.batch_size = 16 does not split over placement.gpus x placement.nnodes = 3 processes: "
        "use a multiple of 3, or fewer processes"
    )
    assert not (scratch / "runs/config").exists()  # nothing configured, so no stage starts


def test_a_permission_error_is_one_line_naming_the_path(project, tmp_path, monkeypatch, capsys):
    """What `chattr -R +i data` does to download: one line with the path and the fix, not "a bug"."""
    import facegan.data.download as download

    scratch = tmp_path / "p"
    scratch.mkdir()
    (scratch / "params.yaml").write_text((project / "params.yaml").read_text())
    run_stage(scratch, monkeypatch, "configure")

    def immutable(path, *args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(download, "atomic_dir", immutable)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(scratch, monkeypatch, "download")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line.startswith("error: data/raw/synthetic: Operation not permitted; ") and "chattr -i" in line
    assert "bug" not in line
