"""Running pieces of an official script without running the script.

Some official code is a script (pytorch/examples dcgan/main.py parses arguments and loads data when
imported) or imports what cannot run here (TensorFlow 1 in PGGAN and StyleGAN). The pieces the
verification needs - a class, a schedule function, the body of a training loop - are plain Python
and PyTorch or numpy. These helpers compile exactly those statements from the official file, with
their original line numbers, and run them in a namespace the caller provides.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import CodeType


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def load_definitions(path: Path, names: list[str], namespace: dict) -> dict[str, int]:
    """Run the top-level definitions `names` (functions, classes, assignments to those names) of `path` in
    `namespace`; returns each name's line number."""
    lines = {}
    for node in _tree(path).body:
        name = getattr(node, "name", None)
        if name is None and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        if name in names:
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
            lines[name] = node.lineno
    missing = set(names) - set(lines)
    if missing:
        raise LookupError(f"{path} defines no {', '.join(sorted(missing))} at its top level")
    return lines


def loop_body(
    path: Path, loop_source: str, stop_before: str | None = None, start_at: str | None = None
) -> tuple[CodeType, int, int]:
    """The body of the first `for` loop whose header line reads `loop_source` (stripped), from the first
    statement whose source starts with `start_at` (the first one by default) up to the first statement whose
    source starts with `stop_before`; returns (code, first line, last line)."""
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.For) and lines[node.lineno - 1].strip() == loop_source:
            body, started = [], start_at is None
            for statement in node.body:
                source = lines[statement.lineno - 1].strip()
                if stop_before and source.startswith(stop_before):
                    break
                started = started or source.startswith(start_at)
                if started:
                    body.append(statement)
            code = compile(ast.Module(body=body, type_ignores=[]), str(path), "exec")
            return code, body[0].lineno, body[-1].end_lineno
    raise LookupError(f"{path} has no loop `{loop_source}`")
