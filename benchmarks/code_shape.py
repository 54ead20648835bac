"""The shape of the code a reader meets, as issue 37 ("corridors") counts it: functions over 7
parameters, `getattr` probes of settings, the ten longest functions, the longest modules.

    python benchmarks/code_shape.py [--json reports/bench/code_shape.json]

Counted over the library, the models and the stages (facegan/ops' kernels excepted from the parameter
count: a kernel's signature is its launch grid). A parameter is any argument but self/cls; a
`getattr` probe is a getattr(...) call with a default whose object is a settings or params value.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("facegan", "models", "stages")
SETTINGS_WORDS = ("params", "settings", "cfg", "arch", "loss", "model_params", "view", "augment")


def functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def parameter_count(node: ast.FunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def is_settings_probe(call: ast.Call) -> bool:
    if not (isinstance(call.func, ast.Name) and call.func.id == "getattr" and len(call.args) == 3):
        return False
    text = ast.unparse(call.args[0])
    return any(word in text for word in SETTINGS_WORDS)


def shape() -> dict:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    wide, probes, lengths = [], [], []
    for path in files:
        name = str(path.relative_to(ROOT))
        for node in functions(path):
            count = parameter_count(node)
            if count > 7 and not name.startswith("facegan/ops/"):
                wide.append(f"{name}:{node.lineno} {node.name} ({count})")
            lengths.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno} {node.name}"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and is_settings_probe(node):
                probes.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    modules = sorted(((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in files), reverse=True)
    return {
        "functions_over_7_parameters": len(wide),
        "wide_functions": wide,
        "getattr_probes_of_settings": len(probes),
        "probes": probes,
        "ten_longest_functions": [f"{n} lines: {where}" for n, where in sorted(lengths, reverse=True)[:10]],
        "longest_modules": [f"{n} lines: {where}" for n, where in modules[:10]],
        "outputs_py_lines": next((n for n, where in modules if where == "facegan/training/outputs.py"), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = shape()
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
