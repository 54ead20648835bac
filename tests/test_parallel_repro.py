"""`python -m facegan.parallel_repro`: the demo's stages side by side, in dependency order, as DVC runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facegan import parallel_repro
from facegan.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# a diamond and a long side chain: prep -> (a, b) -> join; long1 -> long2
GRAPH = {"prep": set(), "a": {"prep"}, "b": {"prep"}, "join": {"a", "b"}, "long1": set(), "long2": {"long1"}}


class FakeStages:
    """Starts `python -c sleep` for a stage, checks that no more than `jobs` run at once, records the order."""

    def __init__(self, jobs: int, fail: str | None = None, seconds: float = 0.3):
        self.jobs, self.fail, self.seconds = jobs, fail, seconds
        self.started: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.threads: set[int] = set()
        self.by_name: dict[str, subprocess.Popen] = {}
        self.exited_before: dict[str, set[str]] = {}  # the stages whose process had exited when this one started

    def __call__(self, name: str, threads: int, log: Path) -> subprocess.Popen:
        assert sum(p.poll() is None for p in self.processes) < self.jobs, f"{name} started beyond {self.jobs} lanes"
        self.exited_before[name] = {n for n, p in self.by_name.items() if p.poll() is not None}
        self.started.append(name)
        self.threads.add(threads)
        log.parent.mkdir(parents=True, exist_ok=True)
        code = f"import time,sys; print('Running stage {name}'); time.sleep({self.seconds}); "
        code += "print('Traceback: boom'); sys.exit(1)" if name == self.fail else "print('done')"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        self.by_name[name] = process
        return process


def test_a_stage_ranks_by_its_own_and_all_its_dependants_expected_seconds():
    seconds = {"prep": 1, "a": 10, "b": 2, "join": 5, "long1": 3, "long2": 4}
    rank = parallel_repro.work_unlocked(GRAPH, seconds)
    assert rank == {"join": 5, "a": 15, "b": 7, "prep": 18, "long2": 4, "long1": 7}  # prep: join counted once


def test_lanes_respect_dependencies_and_the_lane_count_and_start_the_longest_path_first(tmp_path):
    fake = FakeStages(jobs=2)
    seconds = {"long1": 100, "long2": 100}  # the side chain is the long one: it must not wait for the diamond
    lines: list[str] = []
    finished, failed = parallel_repro.run_lanes(GRAPH, 2, 1, seconds, fake, tmp_path, lines.append)
    assert failed is None and set(finished) == set(GRAPH)
    assert fake.started[0] == "long1"  # rank 200 beats prep's 4
    for name, deps in GRAPH.items():  # each started after all it depends on had finished
        assert all(fake.started.index(d) < fake.started.index(name) for d in deps)
    assert fake.threads == {1}
    assert all(t.ran for t in finished.values())  # the fake logs say 'Running stage'
    assert sum("] done   " in line for line in lines) == len(GRAPH)


def test_a_stage_waits_until_every_stage_it_depends_on_has_exited_even_with_lanes_free(tmp_path):
    """With more lanes than stages, only the dependencies hold a stage back: `join` must not start while `a`
    or `b` still runs (a stage reading an output that is still being written would read half of it)."""
    fake = FakeStages(jobs=len(GRAPH), seconds=0.5)
    finished, failed = parallel_repro.run_lanes(GRAPH, len(GRAPH), 1, {}, fake, tmp_path, lambda line: None)
    assert failed is None and set(finished) == set(GRAPH)
    for name, deps in GRAPH.items():
        assert deps <= fake.exited_before[name], (name, deps, fake.exited_before[name])


def test_a_failed_stage_stops_new_starts_lets_the_running_finish_and_shows_its_log(tmp_path):
    fake = FakeStages(jobs=2, fail="prep")
    lines: list[str] = []
    finished, failed = parallel_repro.run_lanes(GRAPH, 2, 1, {}, fake, tmp_path, lines.append)
    assert failed == "prep"
    assert "a" not in fake.started and "b" not in fake.started and "join" not in fake.started
    assert all(p.poll() is not None for p in fake.processes)  # nothing left running
    assert any("FAILED prep" in line for line in lines) and any("Traceback: boom" in line for line in lines)
    assert "prep" not in finished


def test_expected_seconds_come_from_the_first_readable_record_and_skipped_stages_count_one(tmp_path, capsys):
    broken, good = tmp_path / "broken.json", tmp_path / "good.json"
    broken.write_text("{not json")
    record = parallel_repro.StageSeconds(
        jobs=2,
        threads_per_job=1,
        total_seconds=9.0,
        stages={"a": parallel_repro.StageTime(seconds=7.5, ran=True), "b": {"seconds": 0.9, "ran": False}},
    )
    good.write_text(record.model_dump_json())
    assert parallel_repro.expected_seconds([tmp_path / "missing.json", broken, good]) == {"a": 7.5, "b": 1.0}
    assert "broken.json is unreadable" in capsys.readouterr().out


def test_set_top_level_changes_the_value_and_keeps_the_comment(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# head\nprofile: study          # study | demo\nmodels:\n  profile: nested\n")
    parallel_repro.set_top_level(path, "profile", "demo")
    assert path.read_text() == "# head\nprofile: demo          # study | demo\nmodels:\n  profile: nested\n"
    with pytest.raises(UserError, match="no single top-level line `seed: ...`"):
        parallel_repro.set_top_level(path, "seed", "1")
    with pytest.raises(UserError, match="plain scalar"):
        parallel_repro.set_top_level(path, "profile", "[a, b]")
    with pytest.raises(UserError, match="plain scalar"):  # a section is not a scalar to overwrite
        parallel_repro.set_top_level(path, "models", "demo")


def test_set_top_level_leaves_every_other_byte_of_params_yaml_as_written(tmp_path):
    """DVC's YAML dumper would re-wrap the long flow mappings and re-quote "" as '': only the value changes."""
    path = tmp_path / "params.yaml"
    shipped = (ROOT / "params.yaml").read_text()
    path.write_text(shipped)
    parallel_repro.set_top_level(path, "seed", "7")  # a value followed by blank lines, not a comment
    parallel_repro.set_top_level(path, "profile", "demo")
    edited = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(shipped.splitlines(), edited) if old != new]
    assert len(edited) == len(shipped.splitlines())
    assert [new.split("#")[0].rstrip() for _, new in changed] == ["profile: demo", "seed: 7"]
    assert all(old.partition("#")[2] == new.partition("#")[2] for old, new in changed)  # their comments kept
    assert yaml.safe_load(path.read_text()) == {**yaml.safe_load(shipped), "seed": 7, "profile": "demo"}
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(UserError, match="duplicate key 'seed'"):
        parallel_repro.set_top_level(path, "seed", "3")


def test_the_graph_is_dvcs_own_from_dvc_yaml():
    upstream = parallel_repro.pipeline_graph(ROOT)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(upstream) == set(stages)
    assert upstream["train-r3gan"] == {"configure", "preprocess"}
    assert upstream["evaluate-r3gan"] == {"configure", "train-r3gan", "reference_stats"}
    assert {f"evaluate-{m}" for m in ("dcgan", "r3gan")} <= upstream["report"]


@pytest.fixture
def dvc_project(tmp_path, monkeypatch):
    """The diamond of three stages below, run once by main and once more (up to date)."""
    test_main_runs_a_real_dvc_pipeline_in_two_lanes_and_a_second_run_finds_it_up_to_date(tmp_path, monkeypatch)
    return tmp_path


def test_main_runs_a_real_dvc_pipeline_in_two_lanes_and_a_second_run_finds_it_up_to_date(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    # each stage writes its output and notes that it ran in ran.log (no output: the run-cache cannot restore it)
    stage = (
        'python -c "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2]); '
        "open('ran.log', 'a').write(sys.argv[1] + chr(10))\" {out} {text}"
    )
    pipeline = {
        "stages": {
            # DVC's run-cache keeps only stages with a dependency, as every stage of dvc.yaml has (its code)
            "left": {"cmd": stage.format(out="left.txt", text="L"), "deps": ["seed.txt"], "outs": ["left.txt"]},
            "right": {"cmd": stage.format(out="right.txt", text="R"), "deps": ["seed.txt"], "outs": ["right.txt"]},
            "both": {
                "cmd": stage.format(out="both.txt", text="B"),
                "deps": ["left.txt", "right.txt"],
                "outs": ["both.txt"],
            },
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    (tmp_path / "seed.txt").write_text("0")
    (tmp_path / "params.yaml").write_text("profile: study   # which\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    parallel_repro.main(["--jobs", "2", "--set", "profile=demo"])
    assert (tmp_path / "both.txt").read_text() == "B"
    assert (tmp_path / "params.yaml").read_text() == "profile: demo   # which\n"
    first = parallel_repro.StageSeconds.model_validate_json((tmp_path / "runs/stage_seconds.json").read_text())
    assert first.jobs == 2 and {n for n, t in first.stages.items() if t.ran} == {"left", "right", "both"}
    parallel_repro.main(["--jobs", "2"])
    again = parallel_repro.StageSeconds.model_validate_json((tmp_path / "runs/stage_seconds.json").read_text())
    assert not any(t.ran for t in again.stages.values())
    assert sorted((tmp_path / "ran.log").read_text().split()) == ["both.txt", "left.txt", "right.txt"]


def test_a_cut_dvc_lock_or_rwlock_is_one_line_and_deleting_it_restores_from_the_run_cache(dvc_project, capsys):
    """DVC writes dvc.lock in place: a kill mid-write left half of it and DVC's multi-line YAML error; a
    corrupt rwlock read as one line naming no fix. Both now say to delete the file, and deleting it works:
    the finished stages come back from DVC's run-cache without running again."""
    lock = dvc_project / "dvc.lock"
    text = lock.read_text()
    lock.write_text(text[: len(text) // 2] + "\n  - {bad: [")
    with pytest.raises(SystemExit) as exit_info:
        parallel_repro.main(["--jobs", "2"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert line.startswith("error: dvc.lock is cut or corrupt (unreadable YAML at line ") and "`rm dvc.lock`" in line
    lock.unlink()
    parallel_repro.main(["--jobs", "2"])
    assert sorted((dvc_project / "ran.log").read_text().split()) == ["both.txt", "left.txt", "right.txt"]  # ran once
    assert (dvc_project / "both.txt").read_text() == "B" and lock.exists()

    rwlock = dvc_project / ".dvc/tmp/rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text('{"read": {"left.txt": [')
    with pytest.raises(SystemExit):
        parallel_repro.main(["--jobs", "2"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: .dvc/tmp/rwlock is corrupt: if no dvc command is running, delete it (`rm .dvc/tmp/rwlock`) and "
        "re-run; nothing is lost (DVC rebuilds it)"
    )
    rwlock.unlink()
    parallel_repro.main(["--jobs", "2"])
