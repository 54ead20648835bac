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
from pathlib import Path

import numpy as np
import pytest
import torch

from facegan import io
from facegan.data.cache import CacheWriter, FaceCache
from facegan.data.synthetic import render_face
from facegan.errors import UserError
from facegan.params import shadowed_edits
from facegan.training import checkpoint
from facegan.training.loop import RunConfig, train
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
    return writer.finish({"source": "synthetic", "synthetic": True})


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
        writer.finish({"source": "synthetic", "synthetic": True})
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
    writer.finish({"source": "synthetic", "synthetic": True}, manifest)
    assert {p.name for p in (tmp_path / "faces").iterdir()} == {"faces.npy", "meta.json", "manifest.csv", "preview.png"}
    assert len(FaceCache(tmp_path / "faces").fingerprint) == 16


# ------------------------------------------------------------------------------------------------
# training runs: data fingerprint, lock, temporaries, kill during a checkpoint write


def config() -> RunConfig:
    return RunConfig(model="dcgan", model_params=DCGAN, train=dict(TRAIN), seed=1, resolution=16)


def test_a_run_never_resumes_on_another_dataset(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "faces", seed=1)
    assert train(config(), tmp_path / "faces", tmp_path / "run", tmp_path / "ckpt", stop_after_kimg=0.032) is None
    first = list((tmp_path / "ckpt/dcgan").iterdir())
    make_cache(tmp_path / "faces", seed=2)  # other faces behind the same path, as after re-running preprocess
    with caplog.at_level(logging.INFO, logger="facegan.training.loop"):
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
        from facegan.training.checkpoint import RunLock
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
from facegan.training import checkpoint
from facegan.training.loop import RunConfig, train
torch.set_num_threads({threads})  # the parent's: float reductions must add up in the same order
cfg = RunConfig(**{args})
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
    args = dict(model=cfg.model, model_params=cfg.model_params, train=cfg.train, seed=cfg.seed, resolution=16)
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
        checkpoint.load(tmp_path / "runs/dcgan/G_ema.pt", fix="run `dvc repro -f train@dcgan`")
    assert "G_ema.pt is missing: run `dvc repro -f train@dcgan`" in one_line(err)
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


def test_an_unexpected_error_is_one_line_pointing_at_its_logged_traceback(tmp_path):
    script = textwrap.dedent("""
        from facegan.errors import stage_main

        @stage_main
        def main():
            {}["missing"]

        main()
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: unexpected KeyError: 'missing' (full traceback in runs/logs/")
    (log,) = (tmp_path / "runs/logs").iterdir()
    assert "Traceback (most recent call last)" in log.read_text() and "KeyError" in log.read_text()
