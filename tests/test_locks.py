"""The stage lock (facegan/errors.py `stage_main(exclusive=True)`, facegan/io.py `ExclusiveLock`): one lock per stage
and per model, so that `dvc repro -j` runs evaluate-dcgan beside evaluate-pggan and report, while a second
evaluate-dcgan stops at once naming the first. (tests/test_faults.py covers a second run of the same data stage, a
dead holder and forked workers.)"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facegan.errors import stage_main

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    sys.argv = ["stages/evaluate.py", "dcgan"]
    from facegan.errors import stage_main

    @stage_main(exclusive=True)
    def main():
        print("locked", flush=True)
        time.sleep(60)

    main()
""")


@pytest.fixture
def evaluate_dcgan_running(tmp_path, monkeypatch):
    """Another process inside `python -m stages.evaluate dcgan`, holding its lock, in the project folder tmp_path."""
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()


def run_stage(monkeypatch, argv: list[str]):
    """A stage's main() as `python -m stages.<name> <args>` runs it: sys.argv, the error boundary and the lock."""
    monkeypatch.setattr(sys, "argv", argv)

    @stage_main(exclusive=True)
    def main():
        return "ran"

    return main()


def test_a_stage_holding_its_lock_blocks_only_itself_for_the_same_model(evaluate_dcgan_running, monkeypatch, capsys):
    assert run_stage(monkeypatch, ["stages/evaluate.py", "pggan"]) == "ran"  # another model's evaluation
    assert run_stage(monkeypatch, ["stages/report.py"]) == "ran"  # another stage
    assert run_stage(monkeypatch, ["stages/reference_stats.py"]) == "ran"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage(monkeypatch, ["stages/evaluate.py", "dcgan"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line.startswith(f"error: another process is running evaluate dcgan (PID {evaluate_dcgan_running.pid} on ")
    assert "runs/locks/evaluate-dcgan.lock" in line and line.endswith("wait for it to finish or stop it, then re-run")


def test_a_stage_that_ended_leaves_its_lock_free_for_the_next_run(tmp_path, monkeypatch):
    """The same process runs a stage twice (as tune's trials and the tests do): the first run's lock is gone."""
    monkeypatch.chdir(tmp_path)
    assert run_stage(monkeypatch, ["stages/report.py"]) == "ran"
    assert run_stage(monkeypatch, ["stages/report.py"]) == "ran"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    take = (
        "from facegan.io import ExclusiveLock\nwith ExclusiveLock('runs/locks/report.lock', 'reporting'): print('free')"
    )
    other = subprocess.run([sys.executable, "-c", take], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert other.stdout.strip() == "free", other.stderr
