"""One error boundary for every stage: a user sees one line, never a traceback.

A `UserError` is a problem the user can fix: `error: <message>` on stderr (the message names the
fix) and exit status 2. Anything else is unexpected: its full traceback goes to a log file under
runs/logs/, and the user sees one line with the exception and the log's path, exit status 1.

An `OSError` that names a path (permission denied, read-only file system, a full disk, a missing
folder) is the user's to fix, not a bug: one line naming the path and what to do, exit status 2.

`@stage_main(exclusive=True)` also lets one process at a time run the stage (an `io.ExclusiveLock`
on runs/locks/<stage>.lock): a stage that writes shared outputs never interleaves with itself.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
import traceback
from pathlib import Path

LOG_DIR = Path("runs/logs")
LOCK_DIR = Path("runs/locks")


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
    path.write_text(f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(err)))
    return path


def os_error_line(err: OSError) -> str | None:
    """One line for an OSError that names a path, saying what to do; None where no path is named."""
    if not err.filename:
        return None
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
    }
    fix = fixes.get(err.errno, "check the path and its file system, then re-run")
    return f"{path}: {err.strerror or type(err).__name__}; {fix}"


def _stage_name() -> str:
    return Path(sys.argv[0]).stem + "".join(f"-{a}" for a in sys.argv[1:2])


def stage_main(fn=None, *, exclusive: bool = False):
    """Decorate a stage's main() with the error boundary described above (and, if `exclusive`, its lock)."""
    if fn is None:
        return functools.partial(stage_main, exclusive=exclusive)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stage = _stage_name()
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
            print(f"error: {stage} interrupted; re-run it to resume", file=sys.stderr)
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


def _unexpected(stage: str, err: BaseException) -> None:
    try:
        where = f"full traceback in {write_traceback(stage, err)}"
    except OSError:
        where = "the traceback could not be written to runs/logs/"
    line = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    print(f"error: unexpected {line} ({where}); this is a bug or an unsupported setup", file=sys.stderr)
    _exit(1)
