"""Faults and bad input: a full disk, changed data, two runs at once, kills mid-write, unexpected errors.
Each case: one line naming the cause and the fix, a non-zero exit, and nothing computed before lost or mixed."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facegan import checkpoint, io
from facegan.data.cache import CacheWriter, FaceCache
from facegan.data.synthetic import render_face
from facegan.errors import UserError
from facegan.handoff import ModelView
from facegan.params import shadowed_edits
from facegan.training.loop import train
from facegan.training.run_files import run_identity
from tests.helpers import cpu_train, study_model

REPO = Path(__file__).resolve().parents[1]
TRAIN = cpu_train(checkpoint_kimg=0.032)
DCGAN = study_model(
    "dcgan", kimg=0.096, batch_size=8, arch={"z_dim": 8, "g_channels": 8, "d_channels": 8, "max_channels": 16}
)


def one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def make_cache(folder: Path, seed: int, count: int = 24, size: int = 16) -> Path:
    writer = CacheWriter(folder, size, count)
    for i in range(count):
        writer.add(render_face(seed, i, size))
    return writer.finish(source="synthetic", synthetic=True)


# ------------------------------------------------------------------------------------------------
# atomic writes


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "stats.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half of the ne")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["stats.json"]


def test_atomic_outputs_get_the_permissions_a_plain_write_would(tmp_path):
    """Images and checkpoints shared on a cluster stay readable by the group/others the umask allows
    (the temporary file behind an atomic write is created 0600)."""
    (tmp_path / "plain.png").write_bytes(b"x")
    (tmp_path / "plain").mkdir()
    with io.atomic_path(tmp_path / "atomic.png") as tmp:
        tmp.write_bytes(b"x")
    with io.atomic_dir(tmp_path / "atomic") as tmp:
        (tmp / "G_ema.pt").write_bytes(b"x")
    for plain, atomic in (("plain.png", "atomic.png"), ("plain", "atomic")):
        assert (tmp_path / atomic).stat().st_mode == (tmp_path / plain).stat().st_mode


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), OSError("4096 requested and 512 written")]
)  # numpy's tofile
def test_a_full_disk_during_an_atomic_write_is_one_line_and_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old weights")
    with pytest.raises(UserError) as err, io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise error
    message = one_line(err)
    assert message.startswith(f"disk full while writing {target}") and "free space there and re-run" in message
    assert target.read_bytes() == b"old weights" and os.listdir(tmp_path) == ["weights.pt"]


# ------------------------------------------------------------------------------------------------
# the face cache


def test_a_disk_too_small_for_the_cache_is_one_line_at_the_start_not_a_bus_error(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(UserError) as err:
        CacheWriter(tmp_path / "faces", 128, 50_000)
    message = one_line(err)
    assert "disk full while writing" in message and "it needs 2.29 GiB" in message


def test_a_full_disk_while_publishing_keeps_the_old_cache_whole_and_the_new_one_resumable(tmp_path, monkeypatch):
    old = make_cache(tmp_path / "faces", seed=1)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    writer = CacheWriter(tmp_path / "faces", 16, 24)
    for i in range(24):
        writer.add(render_face(2, i, 16))
    writer.checkpoint(position=24)

    def full(handle, array, allow_pickle=True):
        handle.write(b"\x93NUMPY partial")
        raise OSError("9216 requested and 512 written")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(UserError) as err:
        writer.finish(source="synthetic", synthetic=True)
    assert one_line(err).startswith(f"disk full while writing {tmp_path / 'faces'}: ")  # the folder, no made-up file
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # faces, meta, manifest, preview as they were
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "faces.partial"]  # no half folder beside it
    assert json.loads((tmp_path / "faces.partial/progress.json").read_text())["count"] == 24  # resumable


def test_cache_and_manifest_are_published_together(tmp_path):
    writer = CacheWriter(tmp_path / "faces", 16, 4)
    for i in range(4):
        writer.add(render_face(0, i, 16))
    manifest = writer.work / "manifest.partial.csv"
    manifest.write_text("source_file,status\n")
    writer.finish(source="synthetic", synthetic=True, manifest=manifest)
    assert {p.name for p in (tmp_path / "faces").iterdir()} == {"faces.npy", "meta.json", "manifest.csv", "preview.png"}
    assert len(FaceCache(tmp_path / "faces").fingerprint) == 16


def test_the_cache_meta_is_a_declared_shape_checked_on_open(tmp_path):
    """meta.json is facegan.handoff.FaceCacheMeta; a meta.json of another shape (a cache from an older
    version, a hand edit) is one line naming the stage that writes it, not a KeyError in a later stage."""
    cache = FaceCache(make_cache(tmp_path / "faces", seed=1))
    assert (cache.meta.source, cache.meta.synthetic, cache.meta.count, cache.meta.resolution) == (
        "synthetic",
        True,
        len(cache),
        16,
    )
    meta = json.loads((tmp_path / "faces/meta.json").read_text())
    del meta["fingerprint"]
    (tmp_path / "faces/meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        FaceCache(tmp_path / "faces")
    message = one_line(err)
    assert "meta.json does not have the shape of FaceCacheMeta (missing fingerprint)" in message
    assert "dvc repro preprocess" in message


# ------------------------------------------------------------------------------------------------
# training runs: data fingerprint, lock, temporaries, kill during a checkpoint write


def config() -> ModelView:
    return ModelView.selected_run(model="dcgan", params=DCGAN, train=dict(TRAIN), seed=1, resolution=16)


def test_a_run_never_resumes_on_another_dataset(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "faces", seed=1)
    assert train(config(), tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt", stop_after_kimg=0.032) is None
    first = list((tmp_path / "ckpt/dcgan").iterdir())
    make_cache(tmp_path / "faces", seed=2)  # other faces behind the same path, as after re-running preprocess
    with caplog.at_level(logging.INFO, logger="facegan.training"):
        stats = train(config(), tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt")
    assert "dcgan: phases" in caplog.text  # the loop's log is captured here...
    assert "resuming dcgan" not in caplog.text  # ...and it started afresh, not from the interrupted step 4
    assert stats.cache_fingerprint == FaceCache(tmp_path / "faces").fingerprint
    assert first[0].exists() and len(list((tmp_path / "ckpt/dcgan").iterdir())) == 1  # the old run kept its own


def test_a_second_training_of_the_same_run_stops_naming_the_holder(tmp_path):
    with (
        checkpoint.RunLock(tmp_path / "run", "dcgan"),
        pytest.raises(UserError) as err,
        checkpoint.RunLock(tmp_path / "run", "dcgan"),
    ):
        pass
    message = one_line(err)
    assert f"another process is training dcgan (PID {os.getpid()} on " in message and "wait for it" in message


def test_a_lock_left_by_a_dead_process_is_taken_over_and_its_temporaries_removed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from facegan.checkpoint import RunLock
        with RunLock(__import__("pathlib").Path({str(tmp_path / "run")!r}), "dcgan"):
            open({str(tmp_path / "run" / ".last.pt.x1y2.tmp")!r}, "wb").write(b"half a checkpoint")
            print("locked", flush=True)
            time.sleep(60)
    """),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"PID {holder.pid} on"), checkpoint.RunLock(tmp_path / "run", "dcgan"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with checkpoint.RunLock(tmp_path / "run", "dcgan"):
        assert not (tmp_path / "run" / ".last.pt.x1y2.tmp").exists()


KILLER = """
import os, signal, sys
from pathlib import Path
import torch
from facegan import checkpoint
from facegan.handoff import ModelView
from facegan.training.loop import train
torch.set_num_threads({threads})  # the parent's: float reductions must add up in the same order
cfg = ModelView.selected_run(**{args})
saves = {{"n": 0}}
real_save = torch.save

def dying_save(obj, path, *a, **k):  # the second checkpoint write dies half-way, as under kill -9
    if Path(path).name.startswith(".last.pt"):
        saves["n"] += 1
        if saves["n"] == 2:
            Path(path).write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *a, **k)

torch.save = dying_save
train(cfg, Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_training_killed_during_a_checkpoint_write_resumes_to_the_uninterrupted_weights(tmp_path):
    make_cache(tmp_path / "faces", seed=1)
    cfg = config()
    straight = train(cfg, tmp_path / "faces", tmp_path / "a/run", tmp_path / "a/ckpt")
    args = dict(
        model=cfg.model, params=cfg.params.model_dump(), train=cfg.train.model_dump(), seed=cfg.seed, resolution=16
    )
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER.format(args=repr(args), threads=torch.get_num_threads()),
            str(tmp_path / "faces"),
            str(tmp_path / "b/run"),
            str(tmp_path / "b/ckpt"),
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    (ckpt,) = (tmp_path / "b/ckpt/dcgan").iterdir()
    assert any(p.name.endswith(".tmp") for p in ckpt.iterdir())  # the half-written temporary is there
    assert checkpoint.load(ckpt / "last.pt")["step"] == 4  # the first checkpoint survived intact
    resumed = train(cfg, tmp_path / "faces", tmp_path / "b/run", tmp_path / "b/ckpt")
    assert resumed.steps == straight.steps
    a, b = (checkpoint.load(p / "run/G_ema.pt")["G_ema"] for p in (tmp_path / "a", tmp_path / "b"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not (tmp_path / "b/ckpt/dcgan").exists() or not list((tmp_path / "b/ckpt/dcgan").rglob("*.tmp"))


def test_a_missing_trained_generator_names_the_stage_to_run(tmp_path):
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "runs/dcgan/G_ema.pt", fix="run `dvc repro -f train-dcgan`")
    assert "G_ema.pt is missing: run `dvc repro -f train-dcgan`" in one_line(err)
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="delete .*last.pt to start the run over"):
        checkpoint.load(tmp_path / "last.pt")


# ------------------------------------------------------------------------------------------------
# params and the error boundary


def test_an_edit_that_the_profile_overrides_is_said(tmp_path):
    committed = yaml_load(REPO / "params.yaml")
    edited = (REPO / "params.yaml").read_text().replace("profile: study", "profile: demo", 1)
    edited = edited.replace("  resolution: 128 ", "  resolution: 64 ", 1)
    (tmp_path / "params.yaml").write_text(edited)
    (note,) = shadowed_edits(tmp_path / "params.yaml", committed)
    assert "params.yaml sets data.resolution=64 (committed: 128), but profile 'demo' sets " in note
    assert "profiles.demo.data.resolution=32, which wins" in note
    assert shadowed_edits(REPO / "params.yaml", committed) == []


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def run_as_stage(body: str, cwd: Path) -> subprocess.CompletedProcess:
    """`body` as a stage's main(), behind the error boundary, in a fresh process."""
    script = f"import errno\nfrom facegan.errors import stage_main\n\n@stage_main\ndef main():\n    {body}\n\nmain()\n"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def test_an_unexpected_error_is_one_line_pointing_at_its_logged_traceback(tmp_path):
    done = run_as_stage('{}["missing"]', tmp_path)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: unexpected KeyError: 'missing' (full traceback in runs/logs/")
    (log,) = (tmp_path / "runs/logs").iterdir()
    assert "Traceback (most recent call last)" in log.read_text() and "KeyError" in log.read_text()


# ------------------------------------------------------------------------------------------------
# round 3: stages that share outputs, odd file systems, inputs checked before the work


HOLDER = """
import sys, time
sys.argv = ["stages/{stage}.py"]
from facegan.errors import stage_main

@stage_main(exclusive=True)
def main():
    print("locked", flush=True)
    time.sleep(60)

main()
"""


@pytest.mark.parametrize("stage", ["preprocess", "download", "reference_stats", "report"])
def test_a_second_run_of_a_stage_that_writes_shared_outputs_stops_at_once(tmp_path, stage):
    """Two `preprocess` runs once appended to one manifest and both exited 0; now the second stops, naming
    the first, and once the first is gone (killed: a stale PID in the lock file) the stage runs again."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(stage=stage)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        (line,) = second.stderr.strip().splitlines()
        assert second.returncode == 2
        assert line.startswith(f"error: another process is running {stage} (PID {holder.pid} on ") and "wait" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    third = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "another process" not in third.stderr and "dvc repro configure" in third.stderr  # past the lock


def test_a_training_of_a_locked_run_stops_through_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "faces", seed=1)
    cfg = config()
    run = checkpoint.checkpoint_dir(
        "dcgan", run_identity(cfg, FaceCache(tmp_path / "faces").fingerprint, torch.float32), tmp_path / "ckpt"
    )
    with checkpoint.RunLock(run, "dcgan"), pytest.raises(UserError, match="another process is training dcgan"):
        train(cfg, tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt")
    assert not (tmp_path / "run").exists()


def test_the_run_key_holds_the_resolved_precision_not_auto(tmp_path, monkeypatch):
    """An `auto` run checkpointed in bf16 on a GPU must not resume in fp32 on a CPU under the same key."""
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "faces", seed=1)
    cfg = config()
    cfg = cfg.replaced(train={**cfg.train.model_dump(), "precision": "auto"})
    assert train(cfg, tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt", stop_after_kimg=0.032) is None
    fingerprint = FaceCache(tmp_path / "faces").fingerprint
    (key,) = [p.name for p in (tmp_path / "ckpt/dcgan").iterdir()]
    assert key == checkpoint.run_key(run_identity(cfg, fingerprint, torch.float32))  # auto on a CPU: fp32
    assert key != checkpoint.run_key(run_identity(cfg, fingerprint, torch.bfloat16))


def test_the_progress_bar_stops_at_the_budget_when_the_last_batch_passes_it(tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "faces", seed=1)
    cfg = config()
    cfg = cfg.replaced(params={**cfg.params.model_dump(), "kimg": 0.1})  # 13 batches of 8: 0.104 kimg
    stats = train(cfg, tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt")
    assert stats.kimg == pytest.approx(0.104)
    assert not [w for w in recwarn if "clamping frac" in str(w.message)]


def test_a_zero_byte_or_truncated_cache_is_one_line_naming_preprocess(tmp_path):
    cache = make_cache(tmp_path / "faces", seed=1)
    faces = (cache / "faces.npy").read_bytes()
    for broken in (b"", faces[: len(faces) // 2]):
        (cache / "faces.npy").write_bytes(broken)
        with pytest.raises(UserError) as err:
            FaceCache(cache)
        assert "faces.npy is corrupt" in one_line(err) and "dvc repro preprocess" in one_line(err)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ('PermissionError(errno.EACCES, "Permission denied", "data/raw")', "data/raw: Permission denied; make it"),
        ('OSError(errno.EROFS, "Read-only file system", "data/faces")', "data/faces: Read-only file system; it is"),
        ('OSError(errno.ENOSPC, "No space left on device", "runs/x")', "runs/x: No space left on device; the disk"),
    ],
)
def test_an_os_error_naming_a_path_is_one_line_with_the_fix_not_a_bug(tmp_path, error, expected):
    done = run_as_stage(f"raise {error}", tmp_path)
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith(f"error: {expected}") and "bug" not in line
    assert not (tmp_path / "runs/logs").exists()


ORPHANS = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from facegan.data.preprocess import _die_with
from facegan.io import ExclusiveLock

with ExclusiveLock(sys.argv[1], "running preprocess"):
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), initializer=_die_with,
                               initargs=(os.getpid(),))
    print("locked", flush=True)
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    time.sleep(0.5)
    print(*[p.pid for p in pool._processes.values()], flush=True)
    time.sleep(60)
"""


def test_a_killed_stage_leaves_no_worker_behind_holding_its_lock(tmp_path):
    """preprocess's forked workers once outlived a killed parent, kept working and held the lock they
    inherited, so the next run said 'another process is running preprocess' until they were found."""
    lock = tmp_path / "preprocess.lock"
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANS, str(lock)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    parent.stdout.readline()
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    with io.ExclusiveLock(lock, "running preprocess"):  # free at once: the workers closed their copies
        pass
    time.sleep(1.0)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid)]
    assert alive == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "gone"


# ------------------------------------------------------------------------------------------------
# round 4: a training and an evaluation of one model, file-size limits, a killed dvc, Ctrl-C in evaluate

RUN_HOLDER = """
import sys, time
from facegan import paths
from facegan.io import ExclusiveLock

with ExclusiveLock(paths.run_lock("dcgan"), sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("holder_doing", "stage", "expected"),
    [
        ("training dcgan", "evaluate", "error: another process is training dcgan (PID"),
        ("evaluating dcgan from runs/dcgan", "train", "error: another process is evaluating dcgan from runs/dcgan"),
    ],
)
def test_a_training_and_an_evaluation_of_one_model_never_overlap(tmp_path, holder_doing, stage, expected):
    """Evaluate once ran beside a new training of the same model and paired the old generator's FID with
    the new run's kimg, exit 0. Now whichever comes second stops at once, naming the first."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", RUN_HOLDER, holder_doing], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}", "dcgan"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (line,) = second.stderr.strip().splitlines()
    assert second.returncode == 2 and line.startswith(expected) and "wait for it to finish" in line


@pytest.mark.parametrize(
    ("write", "names"),
    [
        ("np.zeros(1 << 20).tofile('big.bin')", "error: a file grew past"),  # numpy: a short write, no errno
        ("checkpoint.save(Path('last.pt'), {'G': torch.zeros(1 << 20)})", "error: last.pt: a"),  # torch: RuntimeError
    ],
)
def test_a_file_size_limit_is_one_line_naming_ulimit_and_leaves_no_cut_log(tmp_path, write, names):
    """`ulimit -f` (EFBIG, or numpy's short write) once read "this is a bug" beside a truncated log."""
    import resource

    script = (
        "import numpy as np, torch\nfrom pathlib import Path\nfrom facegan import checkpoint\n"
        "from facegan.errors import stage_main\n\n"
        f"@stage_main\ndef main():\n    {write}\n\nmain()\n"
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=limit
    )
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "bug" not in line and line.startswith(names)
    assert "file-size limit (`ulimit -f`" in line and "ulimit -f unlimited" in line
    assert not (tmp_path / "runs/logs").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no cut temporary either


def test_a_bug_whose_traceback_cannot_be_written_leaves_no_partial_log(tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # the traceback is longer than this

    script = "from facegan.errors import stage_main\n\n@stage_main\ndef main():\n    {}['missing']\n\nmain()\n"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=limit
    )
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and line.startswith("error: unexpected KeyError: 'missing'")
    assert "no partial log was left" in line and list((tmp_path / "runs/logs").iterdir()) == []


FAKE_DVC = """
import subprocess, sys
stage = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(stage.pid, flush=True)
stage.wait()
"""
LONG_STAGE = """
import sys, time
sys.argv = ["stages/train.py", "dcgan"]
from facegan.errors import stage_main

@stage_main
def main():
    time.sleep(60)

main()
"""


def test_a_stage_stops_when_the_dvc_running_it_is_killed(tmp_path):
    """`kill -9` of dvc once left its stage running on, writing outputs that no dvc.lock would record."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/dvc").write_text(FAKE_DVC)  # what the console script's argv looks like: python .../bin/dvc
    env = dict(os.environ, PYTHONPATH=str(REPO))
    dvc = subprocess.Popen(
        [sys.executable, str(tmp_path / "bin/dvc"), LONG_STAGE],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stage = int(dvc.stdout.readline())
    time.sleep(1.0)  # the stage is up and watching
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _state(stage) not in ("gone", "Z"):
        time.sleep(0.1)
    assert _state(stage) in ("gone", "Z"), "the stage outlived its dvc"
    line = dvc.stderr.read().strip().splitlines()[-1]  # the stage inherited dvc's stderr
    assert line == (
        "error: train-dcgan stopped: its dvc process is gone (killed?); "
        "re-run it to resume where it stopped (`dvc repro`)"
    )


INTERRUPTIBLE = """
import sys, time
sys.argv = ["stages/evaluate.py", "dcgan"]
import torch
from facegan.errors import stage_main, stop_at_once_on_interrupt

@stage_main(resumable=False)
def main():
    a = torch.randn(3000, 3000)
    with stop_at_once_on_interrupt("evaluate-dcgan"):
        print("working", flush=True)
        while True:
            a = torch.linalg.matrix_power(a / a.norm(), 400)  # seconds inside one operation

main()
"""


def test_ctrl_c_stops_evaluate_at_once_and_says_it_starts_over(tmp_path):
    """Evaluate's Ctrl-C took 10-20 s (Python waits for the running tensor operation) and said "resume"."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    stage = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert stage.stdout.readline().strip() == b"working"
    time.sleep(0.5)
    sent = time.monotonic()
    stage.send_signal(signal.SIGINT)
    stage.wait(timeout=30)
    took = time.monotonic() - sent
    (line,) = stage.stderr.read().decode().strip().splitlines()
    assert stage.returncode == 130 and line == "error: evaluate-dcgan stopped: interrupted; re-run it: it starts over"
    assert took < 1.0, f"{took:.1f} s to stop"
