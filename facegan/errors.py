"""One error boundary for every stage: a user sees one line, never a traceback.

A `UserError` is a problem the user can fix: `error: <message>` on stderr (the message names the
fix) and exit status 2. Anything else is unexpected: its full traceback goes to a log file under
runs/logs/, and the user sees one line with the exception and the log's path, exit status 1.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from pathlib import Path

LOG_DIR = Path("runs/logs")


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


def stage_main(fn):
    """Decorate a stage's main() with the error boundary described above."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stage = Path(sys.argv[0]).stem + "".join(f"-{a}" for a in sys.argv[1:2])
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            _close_progress_bars()
            print(f"error: {err}", file=sys.stderr)
            _exit(2)
        except KeyboardInterrupt:
            _close_progress_bars()
            print(f"error: {stage} interrupted; re-run it to resume", file=sys.stderr)
            _exit(130)
        except Exception as err:  # noqa: BLE001 - the boundary: anything else is reported, not shown raw
            _close_progress_bars()
            try:
                where = f"full traceback in {write_traceback(stage, err)}"
            except OSError:
                where = "the traceback could not be written to runs/logs/"
            line = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"error: unexpected {line} ({where}); this is a bug or an unsupported setup", file=sys.stderr)
            _exit(1)

    return wrapper
