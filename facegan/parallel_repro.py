"""`python -m facegan.parallel_repro --jobs 2`: `dvc repro` with independent stages side by side.

`dvc repro` runs one stage at a time. On a CPU the demo's small networks leave the second core
mostly idle (StyleGAN2 at 32 px trains at 57 img/s on two threads and 55 on one), so two stages
on one thread each do nearly twice the work in the same time. This runs the pipeline that DVC
itself builds from dvc.yaml (`Repo.index.graph`: no stage or path is listed here) as `--jobs`
lanes:

  - a stage starts once every stage it depends on has finished, each as
    `dvc --wait-for-lock repro --single-item <stage>` (DVC skips it when it is up to date, and
    releases its repository lock while the stage's command runs, so lanes do not wait on each
    other);
  - each lane's process gets `cpu_count // jobs` threads (OMP_NUM_THREADS, MKL_NUM_THREADS);
  - among the ready stages, the one whose own and dependants' expected seconds add up to the most
    goes first: the longest training does not start last, and reference_stats, which seven
    evaluations wait for, does not run after every training (its lane would idle in the end).
    Expected seconds come from the last run here (runs/stage_seconds.json), else from the committed
    measurement of the demo (reports/bench/stage_seconds_cpu_demo.json), else 1 per stage;
  - each stage's output goes to runs/logs/<stage>.log; the console gets one line per stage start
    and end. A failed stage lets the running ones finish, starts no new one, prints the last lines
    of its log and exits 2 with one line; what finished is cached, so running the command again
    continues.

Before any dvc command it checks the files DVC keeps (`check_dvc_state`): a dvc.lock cut by a kill
mid-write, or a corrupt .dvc/tmp/rwlock, is one line with the fix (delete it; the run-cache restores
what had finished).

Writes runs/stage_seconds.json (and, with --record, the bench file): each stage's wall seconds,
whether DVC ran or skipped it, and the whole run's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from facegan.errors import UserError, stage_main
from facegan.io import read_json, write_json, write_text

LOG_DIR = Path("runs/logs")
PARAMS_FILE = Path("params.yaml")
SECONDS_FILE = Path("runs/stage_seconds.json")
MEASURED_FILE = Path("reports/bench/stage_seconds_cpu_demo.json")
POLL_SECONDS = 0.2
LOG_TAIL_LINES = 15


class StageTime(BaseModel):
    seconds: float
    ran: bool  # False where DVC found the stage up to date


class StageSeconds(BaseModel):
    """What one parallel run took: runs/stage_seconds.json (and the committed bench file)."""

    jobs: int
    threads_per_job: int
    total_seconds: float
    stages: dict[str, StageTime]


def set_top_level(path: Path, key: str, value: str) -> None:
    """Set a top-level scalar of a YAML file in place, its comments kept. The file is read by DVC's own
    round-trip parser (`dvc.utils.serialize.parse_yaml_for_update`, ruamel.yaml, which `dvc exp run -S`
    edits params with), which says where the key's value and its comment are; only that value is replaced,
    since DVC's dumper would also re-wrap every long line and re-quote every string of params.yaml."""
    import yaml
    from dvc.utils.serialize import parse_yaml_for_update

    from facegan.params import read_yaml

    before = read_yaml(path)  # one line for a file that is not valid YAML or holds a key twice
    text = path.read_text()
    data = parse_yaml_for_update(text, path)
    if key not in data:
        raise UserError(f"--set {key}={value}: {path} has no single top-level line `{key}: ...` to set")
    plain = f"--set {key}={value}: give a plain scalar value (a word or a number), for a key that holds one"
    try:
        parsed = yaml.safe_load(value)  # as facegan.params will read it
        if not isinstance(parsed, (str, int, float, bool)) or isinstance(data[key], (dict, list)):
            raise UserError(plain)
        edited = replaced_value(text, data, key, value)
        if yaml.safe_load(edited) != {**before, key: parsed}:  # the value took its whole line; nothing else moved
            raise UserError(plain)
    except yaml.YAMLError:
        raise UserError(plain) from None
    if edited != text:
        write_text(path, edited)


def replaced_value(text: str, data, key: str, value: str) -> str:
    """`text` with the one-line value of `key` replaced by `value`, where the round-trip parse `data` of
    `text` places it; the whitespace and comment after it are kept as they are."""
    line, column = data.lc.value(key)
    lines = text.splitlines(keepends=True)
    after = (data.ca.items.get(key) or [None] * 3)[2]  # what follows the value: a comment, blank lines
    on_line = after is not None and after.start_mark.line == line and after.value.startswith("#")
    stop = after.column if on_line else len(lines[line].rstrip())
    end = column + len(lines[line][column:stop].rstrip())
    lines[line] = lines[line][:column] + value + lines[line][end:]
    return "".join(lines)


def pipeline_graph(root: Path = Path(".")) -> dict[str, set[str]]:
    """{stage: the stages it depends on}, as DVC builds it from dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge points from a stage to a stage it depends on
        return {stage.addressing: {dep.addressing for dep in graph.successors(stage)} for stage in graph.nodes}


def work_unlocked(upstream: Mapping[str, set[str]], seconds: Mapping[str, float]) -> dict[str, float]:
    """Each stage's expected seconds plus those of every stage after it (its transitive dependants)."""
    downstream: dict[str, set[str]] = {name: set() for name in upstream}
    for name, deps in upstream.items():
        for dep in deps:
            downstream[dep].add(name)
    after: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:
        if name not in after:
            after[name] = set(downstream[name]).union(*(visit(d) for d in downstream[name]))
        return after[name]

    return {name: seconds.get(name, 1.0) + sum(seconds.get(d, 1.0) for d in visit(name)) for name in upstream}


def expected_seconds(files: Iterable[Path]) -> dict[str, float]:
    """Each stage's seconds in the first readable record of a run (a stage DVC skipped there counts 1)."""
    for path in files:
        if not path.exists():
            continue
        try:
            record = StageSeconds.model_validate(read_json(path))
        except (UserError, ValueError) as err:  # only the order of the stages depends on it: say so, go on
            print(f"warning: {path} is unreadable ({str(err).splitlines()[0]}); ignoring it for the stage order")
            continue
        return {name: t.seconds if t.ran else 1.0 for name, t in record.stages.items()}
    return {}


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path
    since: float


def dvc_stage(name: str, threads: int, log: Path) -> subprocess.Popen:
    """`dvc repro --single-item <name>` on `threads` threads, its output into `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", name]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def skipped_by_dvc(log: Path) -> bool:
    """Whether DVC found the stage up to date or restored it from its run-cache (its own words in the log)."""
    text = log.read_text(errors="replace")
    return ("didn't change, skipping" in text or "is cached - skipping run" in text) and "Running stage" not in text


def check_dvc_state(root: Path = Path(".")) -> None:
    """Stop with one line, before any dvc command, where a file DVC keeps is cut or corrupt: DVC writes
    dvc.lock in place, so a kill mid-write leaves part of it (unreadable YAML, or YAML that fails DVC's own
    lock-file schema: DVC's multi-line error either way; a cut that still reads as a valid, shorter lock
    file only makes DVC re-run or restore the stages it no longer records), and a corrupt
    .dvc/tmp/rwlock reads as a one-liner that names no fix."""
    import yaml
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA

    lock = root / "dvc.lock"
    if lock.exists():
        problem = None
        try:
            COMPILED_LOCKFILE_SCHEMA(yaml.safe_load(lock.read_text(errors="replace")))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            problem = "unreadable YAML" + (f" at line {mark.line + 1}" if mark else "")
        except Exception as err:  # noqa: BLE001 - DVC's schema (voluptuous) raises its own Invalid
            where = ".".join(map(str, getattr(err, "path", []))) or "the top"
            problem = f"{getattr(err, 'msg', type(err).__name__)} at {where}"
        if problem:
            raise UserError(
                "dvc.lock is cut or corrupt (" + problem + "; a kill while DVC wrote it?): delete it (`rm dvc.lock`) "
                "and run `dvc repro`: the stages that had finished come back from DVC's run-cache without running again"
            )
    rwlock = root / ".dvc/tmp/rwlock"
    if rwlock.exists():
        try:
            ok = isinstance(json.loads(rwlock.read_text(errors="replace") or "{}"), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise UserError(
                ".dvc/tmp/rwlock is corrupt: if no dvc command is running, delete it (`rm .dvc/tmp/rwlock`) and "
                "re-run; nothing is lost (DVC rebuilds it)"
            )


def tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(log.read_text(errors="replace").replace("\r", "\n").splitlines()[-lines:])


def run_lanes(
    upstream: Mapping[str, set[str]],
    jobs: int,
    threads: int,
    seconds: Mapping[str, float],
    start: Callable[[str, int, Path], subprocess.Popen] = dvc_stage,
    log_dir: Path = LOG_DIR,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, StageTime], str | None]:
    """Run every stage once its dependencies finished, `jobs` at a time: (times, the failed stage or None)."""
    rank = work_unlocked(upstream, seconds)
    order = {name: i for i, name in enumerate(upstream)}  # ties: dvc.yaml's order
    pending, finished, running = set(upstream), {}, []
    failed: str | None = None
    began = time.perf_counter()
    while pending or running:
        ready = sorted((n for n in pending if upstream[n] <= finished.keys()), key=lambda n: (-rank[n], order[n]))
        while failed is None and ready and len(running) < jobs:
            name = ready.pop(0)
            pending.discard(name)
            log = log_dir / f"{name}.log"
            running.append(Started(name, start(name, threads, log), log, time.perf_counter()))
            say(f"[{time.perf_counter() - began:6.0f}s] start  {name}   (log: {log})")
        if failed is not None and not running:
            break
        time.sleep(POLL_SECONDS)
        for job in [j for j in running if j.process.poll() is not None]:
            running.remove(job)
            took = round(time.perf_counter() - job.since, 1)
            if job.process.returncode != 0:
                failed = failed or job.name
                say(f"[{time.perf_counter() - began:6.0f}s] FAILED {job.name} after {took}s; its log ends:")
                say(tail(job.log))
                continue
            ran = not skipped_by_dvc(job.log)
            finished[job.name] = StageTime(seconds=took, ran=ran)
            say(f"[{time.perf_counter() - began:6.0f}s] done   {job.name} in {took}s{'' if ran else ' (up to date)'}")
    return finished, failed


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="stages at once (each gets cpu_count // jobs threads)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="set a top-level scalar of params.yaml first"
    )
    parser.add_argument("--record", action="store_true", help=f"also write the timings to {MEASURED_FILE}")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more stages at once")
    for assignment in args.set:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise UserError(f"--set {assignment}: write it as KEY=VALUE, e.g. --set profile=demo")
        set_top_level(PARAMS_FILE, key, value)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    check_dvc_state()
    upstream = pipeline_graph()
    seconds = expected_seconds([SECONDS_FILE, MEASURED_FILE])
    began = time.perf_counter()
    finished, failed = run_lanes(upstream, args.jobs, threads, seconds)
    record = StageSeconds(
        jobs=args.jobs,
        threads_per_job=threads,
        total_seconds=round(time.perf_counter() - began, 1),
        stages=finished,
    )
    if failed is not None:
        raise UserError(
            f"stage {failed} failed (its log: {LOG_DIR / (failed + '.log')}): fix what it says and re-run; "
            "the finished stages are cached"
        )
    write_json(SECONDS_FILE, record.model_dump())
    if args.record:
        write_json(MEASURED_FILE, record.model_dump())
    print(f"all {len(finished)} stages done in {record.total_seconds}s on {args.jobs} lanes of {threads} thread(s)")


if __name__ == "__main__":
    main()
