"""Write every golden file from the official code: the one command that makes tests/golden/.

    python -m verification.regenerate --out DIR [--only NAME ...] [--threads N] [--compare DIR]

Reads the official checkouts from .scratch/official/ (or FACEGAN_OFFICIAL_DIR; verification/README.md says
how to lay them), runs each golden's script in this process with torch on N threads (default 1) and writes
<DIR>/<name>.pt (schedules: schedules.json). The committed goldens are what this command wrote at the commit
their `meta.project_commit` names; `FACEGAN_GOLDEN_DIR=DIR make test` runs the golden tests on your own.
`--compare DIR` then prints, per golden, the largest difference of every number from the goldens in DIR
(`tensor_differences`): 0 where the two are bit-identical apart from their meta.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from facegan.errors import UserError
from verification import (
    golden_ada,
    golden_dcgan,
    golden_io,
    golden_nvlabs,
    golden_r3gan,
    golden_schedules,
    golden_styleswin,
)

SCRIPTS = (golden_nvlabs, golden_styleswin, golden_dcgan, golden_r3gan, golden_ada, golden_schedules)
GOLDENS = {name: script for script in SCRIPTS for name in script.NAMES}  # golden name -> the script writing it


def golden_path(directory: Path, name: str) -> Path:
    return directory / ("schedules.json" if name == "schedules" else f"{name}.pt")


def read(path: Path):
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, weights_only=True)


def tensor_differences(ours, theirs, path: str = "") -> tuple[float, str]:
    """The largest difference between two goldens' numbers, apart from `meta`: per tensor or number its largest
    absolute difference over its largest magnitude (1 where the structure or a non-number differs)."""
    if isinstance(theirs, dict):
        if set(ours) != set(theirs) if isinstance(ours, dict) else True:
            return 1.0, f"{path}: other keys"
        found = [tensor_differences(ours[k], v, f"{path}/{k}") for k, v in theirs.items() if k != "meta"]
        return max(found, default=(0.0, path))
    if isinstance(theirs, list | tuple):
        if not isinstance(ours, list | tuple) or len(ours) != len(theirs):
            return 1.0, f"{path}: other length"
        return max((tensor_differences(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(ours, theirs))),
                   default=(0.0, path))  # fmt: skip
    if isinstance(theirs, torch.Tensor):
        if not isinstance(ours, torch.Tensor) or ours.shape != theirs.shape:
            return 1.0, f"{path}: other shape"
        if not theirs.is_floating_point():
            return float(not torch.equal(ours, theirs)), path
        if theirs.numel() == 0:
            return 0.0, path
        scale = max(float(theirs.double().abs().max()), 1e-30)
        return float((ours.double() - theirs.double()).abs().max()) / scale, path
    if isinstance(theirs, bool | str | None) or not isinstance(theirs, int | float):
        return float(ours != theirs), path
    return abs(float(ours) - float(theirs)) / max(abs(float(theirs)), 1e-30), path


def compare(new_dir: Path, old_dir: Path, names: list[str]) -> None:
    for name in names:
        new, old = golden_path(new_dir, name), golden_path(old_dir, name)
        if not old.is_file():
            print(f"{name}: no golden in {old_dir}")
            continue
        size, where = tensor_differences(read(new), read(old))
        print(f"{name}: largest difference {size:.3g} (at {where or '-'})" if size else f"{name}: identical numbers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder the golden files are written to")
    parser.add_argument("--only", nargs="+", choices=sorted(GOLDENS), help="these goldens only (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default 1)")
    parser.add_argument("--compare", type=Path, help="print each new golden's largest difference from this folder's")
    args = parser.parse_args(argv)
    names = args.only or list(GOLDENS)
    scripts = [script for script in SCRIPTS if any(name in names for name in script.NAMES)]
    if len(scripts) > 1:  # one process per script: NVlabs' and R3GAN's packages share names (official.import_nvlabs)
        for script in scripts:
            wanted = [name for name in script.NAMES if name in names]
            child = [sys.executable, "-m", "verification.regenerate", "--out", str(args.out), "--only", *wanted]
            code = subprocess.run([*child, "--threads", str(args.threads)], cwd=golden_io.REPO_ROOT).returncode
            if code:
                return code
    else:
        torch.set_num_threads(args.threads)
        os.environ["FACEGAN_GOLDEN_DIR"] = str(args.out.resolve())
        try:
            scripts[0].main(names)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.compare:
        compare(args.out, args.compare, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
