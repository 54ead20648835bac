"""Atomic file writes: outputs appear whole or not at all, so an interrupted stage loses nothing.

`atomic_path` / `atomic_dir` write beside the target under a hidden `.<name>.*.tmp` name and rename
over it only when the block succeeds; on any failure the old file stays as it was and the
temporary one is removed. A temporary file left by a killed process (SIGKILL cannot be caught)
is found and removed by `remove_stale_temporaries` when its owner is known to be dead.

A full disk is recognised whichever way it surfaces: an OSError with errno ENOSPC (or EDQUOT), or
numpy's `tofile`/`save`, which reports "N requested and M written" without an errno; the
user sees one line naming the folder and what to free.

`ExclusiveLock` lets one process at a time write a set of shared outputs: an exclusive `flock` on a
lock file (which the kernel releases when its holder dies, however it dies) holding the holder's
PID and what it is doing, so a second process stops at once naming it (in the holder's words: one lock
can guard two jobs, as runs/<model> is guarded for training and evaluation), and a lock left by a dead
process is simply taken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import shutil
import socket
import tempfile
import time
import weakref
from pathlib import Path

from facegan.errors import TOO_LARGE, UserError

TEMP_SUFFIX = ".tmp"


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; outputs get the modes a plain open()/mkdir() would give them
FILE_MODE = 0o666 & ~_process_umask()
DIR_MODE = 0o777 & ~_process_umask()


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def is_disk_full(err: BaseException) -> bool:
    """A full disk, a used-up quota, or a cut write (EFBIG and short writes too: `disk_full_error` tells them apart)."""
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        return True
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, OSError) and err.errno is None and " requested and " in str(err) and "written" in str(err)


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`), None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def is_file_too_large(err: BaseException) -> bool:
    """EFBIG, or numpy's short write ("N requested and M written", no errno) under a file-size limit: the
    limit, not the disk, is then what cut the write."""
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        return True
    return is_disk_full(err) and err.errno is None and file_size_limit() is not None


CUT_WRITE_FREE_BYTES = 16 * 2**20  # less free than this beside a write that failed without errno: the disk is full


def cut_write_error(path: str | os.PathLike) -> UserError | None:
    """The one line for a write that failed without saying why (torch.save's RuntimeError from its zip
    writer): the file-size limit where one is set, a full disk where almost nothing is free, else None."""
    if file_size_limit() is not None:
        return UserError(f"{path}: {TOO_LARGE}")
    folder = Path(path).parent
    if folder.exists() and shutil.disk_usage(folder).free < CUT_WRITE_FREE_BYTES:
        return disk_full_error(path)
    return None


def disk_full_error(
    path: str | os.PathLike, needed_bytes: int | None = None, is_dir: bool = False, err: BaseException | None = None
) -> UserError:
    """One line naming what was being written (`path`, a file or with `is_dir` a folder) and the free space
    on the nearest existing folder it lives in (or the file-size limit, where that cut the write)."""
    if err is not None and is_file_too_large(err):
        return UserError(f"{path}: {TOO_LARGE}")
    existing = Path(path) if is_dir else Path(path).parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    need = f"it needs {gib(needed_bytes)}, " if needed_bytes else ""
    return UserError(
        f"disk full while writing {path}: {need}{gib(free)} free on {existing}; free space there and re-run"
    )


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError while creating the hidden temporary names the output the user asked for, not the temporary."""
    try:
        yield
    except OSError as err:
        raise type(err)(err.errno, err.strerror, str(path)) from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, err=err) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old{TEMP_SUFFIX}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)  # two renames: the old folder is gone only once the new one is in place
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, is_dir=True, err=err) from err
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.*.tmp` files and folders atomic writes left under `folder` (the caller holds the
    folder's lock, so their writers are dead). Returns what was removed."""
    removed = []
    for tmp in sorted(Path(folder).rglob(f".*{TEMP_SUFFIX}")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing: run the stage that writes it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}); delete it and re-run its stage") from err


class ExclusiveLock:
    """One process at a time: `with ExclusiveLock(path, "preprocessing the faces"):` (module docstring)."""

    def __init__(self, path: str | os.PathLike, doing: str):
        self.path, self.doing, self.handle = Path(path), doing, None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who, _, doing = handle.read().strip().partition("\n")  # the holder's words: a lock may guard two jobs
            handle.close()
            raise UserError(
                f"another process is {doing or self.doing} ({who or 'unknown'}; lock {self.path}): wait for it "
                "to finish or stop it, then re-run"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.write(self.doing)
        handle.flush()
        self.handle = handle
        HELD_LOCKS.add(self)
        return self

    def _forget_in_child(self) -> None:
        if self.handle is not None:
            self.handle.close()  # this copy only: the lock stays with the parent's descriptor
            self.handle = None

    def __exit__(self, *exc) -> None:
        HELD_LOCKS.discard(self)
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


# a forked child (a preprocess worker) shares its parent's locks; it must not keep holding them once the
# parent is gone, so children close their copies. One fork handler for every lock (a handler per lock
# could never be removed and would keep each lock ever taken alive).
HELD_LOCKS: weakref.WeakSet[ExclusiveLock] = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    for lock in list(HELD_LOCKS):
        lock._forget_in_child()


os.register_at_fork(after_in_child=_forget_locks_in_child)
