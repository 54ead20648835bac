"""One error boundary for every stage: a user sees one line, never a traceback.

A `UserError` is a problem the user can fix: `error: <message>` on stderr (the message names the
fix) and exit status 2. Anything else is unexpected: its full traceback goes to a log file under
runs/logs/, and the user sees one line with the exception and the log's path, exit status 1.

An `OSError` that names a path (permission denied, read-only file system, a full disk, a missing
folder) is the user's to fix, not a bug: one line naming the path and what to do, exit status 2.

An OSError without a path gets one line too where its cause is known: a full disk, or a file that
grew past the file-size limit (EFBIG: `ulimit -f`, or a file system's largest file). When the traceback
of a real bug cannot be written (that same limit), the partial log is removed and the line says so.

`@stage_main(exclusive=True)` also lets one process at a time run the stage (an `io.ExclusiveLock`
on runs/locks/<stage>.lock): a stage that writes shared outputs never interleaves with itself.
`resumable=False` marks a stage that starts over when interrupted (evaluate, reference_stats): its
Ctrl-C line says so.

A stage run by `dvc repro` stops when that dvc process dies (`kill -9` of dvc would otherwise leave the
stage running, writing outputs no dvc.lock will record): a watcher thread finds the dvc process among
the stage's ancestors and interrupts the stage once it is gone.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

LOG_DIR = Path("runs/logs")
LOCK_DIR = Path("runs/locks")
DVC_POLL_SECONDS = 1.0
TOO_LARGE = (
    "a file grew past the file-size limit (`ulimit -f` in this shell, or the largest file its file system "
    "holds, 4 GiB on FAT32): raise the limit (`ulimit -f unlimited`) or point the params at another file "
    "system, then re-run (finished work is kept)"
)


class UserError(Exception):
    """A problem the user can fix (bad params, missing file, no network); the message names the fix."""


def _close_progress_bars() -> None:
    """Close open tqdm bars first, so that none redraws itself below the error line at exit."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", [])):
        bar.close()


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def write_traceback(stage: str, err: BaseException) -> Path:
    """The full traceback of an unexpected error, in runs/logs/<stage>-<time>-<pid>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.write_text(f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(err)))
    except OSError:
        path.unlink(missing_ok=True)  # a cut log would pass for the whole traceback
        raise
    return path


def os_error_line(err: OSError) -> str | None:
    """One line for an OSError that names a path, or whose cause is known without one, saying what to do;
    None for any other."""
    if not err.filename:
        from facegan.io import is_file_too_large  # facegan.io imports this module

        if is_file_too_large(err):
            return TOO_LARGE
        return {
            errno.ENOSPC: "the disk is full: free space where the params write and re-run (finished work is kept)",
            errno.EDQUOT: "the disk quota is used up: free space and re-run (finished work is kept)",
        }.get(err.errno)
    path = err.filename if not err.filename2 else f"{err.filename} -> {err.filename2}"
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    fixes = {
        errno.EACCES: "make it writable (readable) by this user (chmod, or chattr -i where it is immutable) or "
        "point the params at a folder you own, then re-run",
        errno.EPERM: "the operation is not permitted there (an immutable file? chattr -i), or point the params at "
        "a folder you own, then re-run",
        errno.EROFS: "it is on a read-only file system: remount it read-write or point the params elsewhere",
        errno.ENOSPC: "the disk is full: free space there and re-run (finished work is kept)",
        errno.EDQUOT: "the disk quota is used up: free space there and re-run (finished work is kept)",
        errno.ENOENT: "it does not exist: check the path, or re-run the stage that writes it",
        errno.EFBIG: TOO_LARGE,
    }
    fix = fixes.get(err.errno, "check the path and its file system, then re-run")
    return f"{path}: {err.strerror or type(err).__name__}; {fix}"


def _stage_name() -> str:
    return Path(sys.argv[0]).stem + "".join(f"-{a}" for a in sys.argv[1:2])


def stage_main(fn=None, *, exclusive: bool = False, resumable: bool = True):
    """Decorate a stage's main() with the error boundary described above (and, if `exclusive`, its lock)."""
    if fn is None:
        return functools.partial(stage_main, exclusive=exclusive, resumable=resumable)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stage = _stage_name()
        watcher = DvcWatcher.start()
        try:
            if not exclusive:
                return fn(*args, **kwargs)
            from facegan.io import ExclusiveLock  # facegan.io imports this module

            with ExclusiveLock(LOCK_DIR / f"{stage}.lock", f"running {stage.replace('-', ' ', 1)}"):
                return fn(*args, **kwargs)
        except UserError as err:
            _close_progress_bars()
            print(f"error: {err}", file=sys.stderr)
            _exit(2)
        except KeyboardInterrupt:
            _close_progress_bars()
            print(f"error: {interrupted_line(stage, resumable, watcher)}", file=sys.stderr)
            _exit(130)
        except OSError as err:
            _close_progress_bars()
            line = os_error_line(err)
            if line is None:
                _unexpected(stage, err)
            print(f"error: {line}", file=sys.stderr)
            _exit(2)
        except Exception as err:  # noqa: BLE001 - the boundary: anything else is reported, not shown raw
            _close_progress_bars()
            _unexpected(stage, err)

    return wrapper


def interrupted_line(stage: str, resumable: bool, watcher: DvcWatcher | None) -> str:
    why = "its dvc process is gone (killed?)" if watcher is not None and watcher.gone else "interrupted"
    again = "re-run it to resume where it stopped" if resumable else "re-run it: it starts over"
    return f"{stage} stopped: {why}; {again}" + ("" if watcher is None else " (`dvc repro`)")


class DvcWatcher:
    """Interrupts this stage (SIGINT, as Ctrl-C would) once the dvc process that runs it is gone."""

    def __init__(self, pid: int, started: str):
        self.pid, self.started, self.gone = pid, started, False

    @classmethod
    def start(cls) -> DvcWatcher | None:
        """Watch the nearest dvc process among this process's ancestors; None when there is none (a stage
        run by hand, or a test)."""
        pid = os.getppid()
        while pid > 1:
            if is_dvc(_cmdline(pid)):
                watcher = cls(pid, _start_time(pid))
                threading.Thread(target=watcher._watch, daemon=True, name="dvc-watcher").start()
                return watcher
            pid = _parent_of(pid)
        return None

    def _watch(self) -> None:
        while _start_time(self.pid) == self.started:  # "" once it is gone; another start time: pid reused
            time.sleep(DVC_POLL_SECONDS)
        self.gone = True
        os.kill(os.getpid(), signal.SIGINT)


def is_dvc(argv: list[str]) -> bool:
    """`dvc ...`, `python .../bin/dvc ...` (the console script) or `python -m dvc ...`."""
    names = [Path(a).name for a in argv[:2]]
    return "dvc" in names or argv[1:3] == ["-m", "dvc"]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): state, ppid, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent_of(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""  # a zombie has exited


@contextlib.contextmanager
def stop_at_once_on_interrupt(stage: str):
    """Within the block, Ctrl-C ends the process at once with one line, even in the middle of a long tensor
    operation (Python runs its own handler only when the operation returns, 10-20 s later in evaluate).
    Only for work that publishes nothing inside the block: an exit there loses nothing but the work."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while (byte := os.read(read_end, 1)) and byte[0] != 0:
            if byte[0] == signal.SIGINT:
                _close_progress_bars()
                print(f"error: {stage} stopped: interrupted; re-run it: it starts over", file=sys.stderr, flush=True)
                os._exit(130)

    thread = threading.Thread(target=watch, daemon=True, name="interrupt-watcher")
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.write(write_end, b"\0")  # wakes the watcher, which ends
        thread.join()
        os.close(read_end)
        os.close(write_end)


def _unexpected(stage: str, err: BaseException) -> None:
    try:
        where = f"full traceback in {write_traceback(stage, err)}"
    except OSError as log_err:
        why = TOO_LARGE.split(":")[0] if log_err.errno == errno.EFBIG else log_err.strerror or type(log_err).__name__
        where = f"its traceback could not be written to {LOG_DIR}/ ({why}), and no partial log was left"
    line = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    print(f"error: unexpected {line} ({where}); this is a bug or an unsupported setup", file=sys.stderr)
    _exit(1)
