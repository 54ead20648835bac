"""How far the official code moves against itself, how far the project is from it, and how far a broken rule
takes it: the measurements the golden tests' tolerances stand on.

    python -m verification.spread [--golden DIR] [--only NAME ...] [--threads N] [--json PATH]

For each step-level golden (teacher forcing, verification/golden_io.record), at every forced step k:
  official   the official code on N threads (default 2) loaded with the golden's state before k, one step,
             against the golden's step k and its state after k (which the official code wrote on 1 thread)
  project    the project's loop (tests/golden_runner.py) on 1 and on N threads, the same comparison
  broken     the project's loop with each broken rule of tests/golden_runner.BROKEN_RULES applied
For the goldens without states (styleswin, ada), the official code runs again on N threads and its numbers are
compared with the golden's (verification.regenerate.tensor_differences). Every row gives the largest difference
of each quantity, where it is, and the test's tolerance for it (tests/golden_runner.TOLERANCES).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from facegan.io import write_text
from tests import golden_runner
from verification import golden_io, regenerate

STEP_LEVEL = ("stylegan2", "stylegan3_t", "stylegan3_r", "r3gan", "dcgan")


def official_differences(name: str, golden: dict, threads: int) -> dict[str, tuple[float, str]]:
    """The official code one step at a time from the golden's own states, on `threads` threads."""
    torch.set_num_threads(threads)
    run = regenerate.GOLDENS[name].official_run(name)
    judge = golden_runner.JUDGES[name]
    worst: dict[str, tuple[float, str]] = {}
    for k in golden["forced"]:
        run.load(golden["states"][k])
        outcome = run.step(k)
        terms = {term: float(v) for phase_terms in outcome["terms"].values() for term, v in phase_terms.items()}
        step = golden_runner.step_differences({"terms": terms, "gradients": outcome["gradients"]}, golden["steps"][k])
        state = golden_runner.state_differences(run.state(), golden["states"][k + 1], judge.skip)
        for quantity, (size, where) in (step | state).items():
            worst[quantity] = max(worst.get(quantity, (0.0, "")), (size, f"step {k} {where}"))
    return worst


def project_differences(golden: dict, name: str, threads: int) -> dict[str, tuple[float, str]]:
    """The project's loop against the golden: one step at a time from the official states (StyleSwin: its two
    free-running steps), the largest difference of each quantity over the steps."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        if name == "styleswin":
            return golden_runner.styleswin_differences(golden, Path(tmp) / "run")
        forced = golden_runner.teacher_forced(golden, Path(tmp) / "forced", golden_runner.JUDGES[name].skip)
    worst: dict[str, tuple[float, str]] = {}
    for k, differences in forced.items():
        for quantity, (size, where) in differences.items():
            worst[quantity] = max(worst.get(quantity, (0.0, "")), (size, f"step {k} {where}"))
    return worst


def broken_differences(golden: dict, name: str) -> dict[str, dict]:
    """Per broken rule: the quantities over their tolerance, at the first forced step where one is."""
    out = {}
    for rule_name, rule in golden_runner.BROKEN_RULES.items():
        if name not in rule.goldens:
            continue
        with pytest.MonkeyPatch.context() as monkeypatch:
            rule.apply(monkeypatch)
            found = project_differences(golden, name, 1)
        out[rule_name] = golden_runner.over_tolerance(found, golden_runner.JUDGES[name])
    return out


def rerun_differences(name: str, threads: int, golden_dir: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FACEGAN_GOLDEN_DIR"] = tmp
        torch.set_num_threads(threads)
        regenerate.GOLDENS[name].main([name])
        new = regenerate.read(regenerate.golden_path(Path(tmp), name))
    return regenerate.tensor_differences(new, regenerate.read(regenerate.golden_path(golden_dir, name)))


def show(rows: dict[str, tuple[float, str]], tolerances: dict[str, float]) -> str:
    return ", ".join(
        f"{q} {v:.2g} (tol {tolerances.get(q, 0):.0g}; {w})"
        for q, (v, w) in sorted(rows.items())
        if v or q in tolerances
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--golden", type=Path, default=golden_runner.golden_dir(), help="the goldens (tests/golden)")
    parser.add_argument("--only", nargs="+", choices=sorted(regenerate.GOLDENS))
    parser.add_argument("--threads", type=int, default=2, help="threads of the second run (default 2)")
    parser.add_argument("--json", type=Path, help="write the measurements here as JSON")
    args = parser.parse_args(argv)
    names = [n for n in (args.only or regenerate.GOLDENS) if n != "schedules"]  # plain numpy: no threads
    report = {"threads": args.threads, "cpu": golden_io.cpu_model(), "torch": str(torch.__version__), "goldens": {}}
    if len(names) > 1:  # one process per golden: NVlabs' and R3GAN's packages share names (official.import_nvlabs)
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                child = [sys.executable, "-m", "verification.spread", "--golden", str(args.golden), "--only", name]
                child += ["--threads", str(args.threads), "--json", f"{tmp}/{name}.json"]
                if subprocess.run(child, cwd=golden_io.REPO_ROOT).returncode:
                    return 1
                report["goldens"] |= json.loads(Path(f"{tmp}/{name}.json").read_text())["goldens"]
        names = []
    for name in names:
        entry = {"official_threads": None}
        if name in STEP_LEVEL:
            golden = golden_io.load(regenerate.golden_path(args.golden, name))
            entry["official_threads"] = official_differences(name, golden, args.threads)
        else:
            size, where = rerun_differences(name, args.threads, args.golden)
            entry["official_threads"] = {"any": (size, where)}
        if name in golden_runner.JUDGES:
            golden = golden_io.load(regenerate.golden_path(args.golden, name))
            entry["project_1_thread"] = project_differences(golden, name, 1)
            entry[f"project_{args.threads}_threads"] = project_differences(golden, name, args.threads)
            entry["broken_rules"] = broken_differences(golden, name)
            entry["tolerances"] = golden_runner.JUDGES[name].tolerances
        tolerances = entry.get("tolerances", {})
        print(f"{name}:")
        for key in ("official_threads", "project_1_thread", f"project_{args.threads}_threads"):
            if key in entry:
                print(f"  {key}: {show(entry[key], tolerances)}")
        for rule, over in entry.get("broken_rules", {}).items():
            print(f"  broken {rule}: " + (f"caught: {show(over, tolerances)}" if over else "NOT CAUGHT"))
        report["goldens"][name] = entry
    if args.json:
        write_text(args.json, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
