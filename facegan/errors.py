"""One-line user errors: every stage turns a UserError into `error: <message>` and exit code 2."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad params, missing file, no network); the message names the fix."""


def stage_main(fn):
    """Decorate a stage's main(): UserError -> one line on stderr, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
