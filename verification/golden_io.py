"""What every golden file holds, how the verification scripts write it, and the loop state they exchange.

A golden file (<golden dir>/<name>.pt, read with torch.load(weights_only=True)) is a dict:
  meta       where the numbers come from (`provenance`): the official repository and commit, the files
             it ran, the command that wrote it, the project commit whose verification/ wrote it, torch,
             the CPU, the threads and the date
  model      the project's model name;  params: its models.<model> params (JSON text) as the test runs them
  seed       the run's seed (the loop draws its step inputs from it: facegan.training.step.step_draws)
  faces      uint8 (N, H, W, 3): the face cache the run trains on
  init       {"G": state_dict, "D": state_dict} in the project's names, copied into the official networks
plus, for the step-level goldens written by `record` (teacher forcing):
  states     {k: loop state}: the official run's whole state before step k (`LoopState`), for every
             step k that is compared from the official state and for the step after it
  forced     the steps k compared one at a time: the test loads states[k], runs one step of the loop and
             compares it with states[k + 1], so that no difference can compound
  free_steps n: the test also runs steps 0..n-1 freely from `init` and compares with states[n]
  steps      {k: {"terms": {phase: {term: value}}, "gradients": {phase: {"norm", "sample"}}}}: every
             phase's loss terms at each step and, at the forced steps, each phase's gradient
The inputs (faces, latents, flips, reals' indices, every global random state) are the project's own,
handed to the official code, so that any difference is a difference of the computation, not of the draws.

A loop state (`LoopState`, a plain dict so that weights_only reads it) holds, in the project's names:
  G, D, G_ema   state dicts
  adam          {"G": {param name: {"step", "exp_avg", "exp_avg_sq"}}, "D": ...}: Adam's moments
  pl_mean       the path-length target (absent where the official loss has none)
  augment_p     the augmentation probability (absent without augmentation)
  real_signs    float64 (sum, count) of sign(D(real)) since ADA's last update (absent without ADA)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facegan.data.synthetic import render_face
from verification.official import commit_of

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
GRADIENT_SAMPLE = 256  # gradient values kept per network: a strided sample over the flattened gradient
LoopState = dict  # the keys above; a dict so that torch.load(weights_only=True) reads it back


def out_dir() -> Path:
    """Where the scripts write: FACEGAN_GOLDEN_DIR (verification.regenerate --out sets it), else tests/golden."""
    return Path(os.environ.get("FACEGAN_GOLDEN_DIR") or GOLDEN_DIR)


def synthetic_faces(n: int, resolution: int) -> np.ndarray:
    """n synthetic faces (the demo's renderer), uint8 NHWC."""
    return np.stack([render_face(0, i, resolution) for i in range(n)])


def reals(faces: np.ndarray, indices: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """The official datasets' float images: uint8 / 127.5 - 1, NCHW, x-flipped where drawn."""
    images = torch.from_numpy(faces[indices.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
    if flips is not None:
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    return images


def gradient_record(module: torch.nn.Module, order: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The norm of a network's whole gradient and a strided sample of it, parameters in registration order or
    in `order` (the official names of the project's parameters, in the project's registration order)."""
    named = dict(module.named_parameters())
    params = list(named.values()) if order is None else [named[name] for name in order]
    flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])
    stride = max(1, flat.numel() // GRADIENT_SAMPLE)
    return {"norm": flat.norm().detach().clone(), "sample": flat[::stride][:GRADIENT_SAMPLE].detach().clone()}


def state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class NameMap:
    """One network's tensors under the project's names and under the official ones: `pairs` lists
    (official name, our name), None for an official constant its forward never reads; `ours` is a network
    of ours of the same architecture (for the shapes: a pair may differ by a reshape)."""

    pairs: list[tuple[str, str | None]]
    ours: torch.nn.Module

    @classmethod
    def in_order(cls, ours: torch.nn.Module, theirs: torch.nn.Module) -> NameMap:
        """Networks whose state dicts list the same tensors in the same order (R3GAN, DCGAN)."""
        mine, official = ours.state_dict(), theirs.state_dict()
        assert len(mine) == len(official), (len(mine), len(official))
        for (name, value), (their_name, their_value) in zip(mine.items(), official.items()):
            assert value.shape == their_value.shape, (name, their_name)
        return cls(list(zip(official, mine)), ours)

    def _mapped(self):
        shapes = {name: value.shape for name, value in self.ours.state_dict().items()}
        return [(theirs, ours, shapes[ours]) for theirs, ours in self.pairs if ours is not None]

    def to_ours(self, theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The official network's state dict in our names and shapes."""
        official = theirs.state_dict()
        return {ours: official[name].detach().clone().reshape(shape) for name, ours, shape in self._mapped()}

    def load_theirs(self, theirs: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        official = theirs.state_dict()
        with torch.no_grad():
            for name, ours, _ in self._mapped():
                official[name].copy_(state[ours].reshape(official[name].shape))

    def adam_to_ours(self, opt: torch.optim.Optimizer, theirs: torch.nn.Module) -> dict[str, dict]:
        """Adam's per-parameter state of the official network in our names and shapes (parameters it has not
        stepped yet are absent, as in torch's own state)."""
        params = dict(theirs.named_parameters())
        adam = {}
        for name, ours, shape in self._mapped():
            if name in params and params[name] in opt.state:
                entry = opt.state[params[name]]
                adam[ours] = {
                    "step": entry["step"].detach().clone(),
                    "exp_avg": entry["exp_avg"].detach().clone().reshape(shape),
                    "exp_avg_sq": entry["exp_avg_sq"].detach().clone().reshape(shape),
                }
        return adam

    def load_adam_theirs(self, opt: torch.optim.Optimizer, theirs: torch.nn.Module, adam: dict[str, dict]) -> None:
        params = dict(theirs.named_parameters())
        opt.state.clear()
        for name, ours, _ in self._mapped():
            if ours in adam:
                param = params[name]
                opt.state[param] = {
                    "step": adam[ours]["step"].clone(),
                    "exp_avg": adam[ours]["exp_avg"].clone().reshape(param.shape),
                    "exp_avg_sq": adam[ours]["exp_avg_sq"].clone().reshape(param.shape),
                }


def record(run, steps: int, forced: list[int], free_steps: int) -> dict:
    """Run an official training run (`run.step(k)` -> {"terms", "gradients"}, `run.state()` -> LoopState)
    for `steps` steps, keeping its state before every forced step and after it, every step's terms and
    the forced steps' gradients. `free_steps`: the length of the free-running check (states[n] is kept)."""
    keep = set(forced) | {k + 1 for k in forced} | {free_steps}
    assert max(keep) <= steps, (forced, steps)
    states, records = {}, {}
    for k in range(steps):
        if k in keep:
            states[k] = run.state()
        outcome = run.step(k)
        records[k] = {"terms": outcome["terms"]}
        if k in forced:
            records[k]["gradients"] = outcome["gradients"]
        print(
            f"step {k}: " + ", ".join(f"{t} {float(v):.6f}" for ts in outcome["terms"].values() for t, v in ts.items())
        )
    if steps in keep:
        states[steps] = run.state()
    return {"states": states, "forced": list(forced), "free_steps": free_steps, "steps": records}


def provenance(repository: str, files: list[str], name: str) -> dict:
    """Where a golden's numbers come from, and how to make them again."""
    return {
        "repository": repository,
        "commit": commit_of(repository),
        "files": files,
        "command": f"python -m verification.regenerate --only {name}",
        "torch": str(torch.__version__),
        "project_commit": project_commit(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }


def pack(tree: dict) -> dict:
    """A nested dict of tensors as one flat tensor per dtype and an index of (path, dtype, shape, offset): a
    zip entry per tensor would cost more than the tensors of a tiny network."""
    leaves, flat, index = [], {}, []

    def walk(node, path):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, (*path, key))
            else:
                leaves.append(((*path, key), value))

    walk(tree, ())
    for path, tensor in leaves:
        dtype = str(tensor.dtype).removeprefix("torch.")
        parts = flat.setdefault(dtype, [])
        offset = sum(part.numel() for part in parts)
        parts.append(tensor.detach().reshape(-1))
        index.append((path, dtype, tuple(tensor.shape), offset))
    return {"flat": {dtype: torch.cat(parts) for dtype, parts in flat.items()}, "index": index}


def unpack(packed: dict) -> dict:
    """`pack`'s nested dict again (empty dicts, such as Adam's state before any step, are not kept)."""
    tree: dict = {}
    for path, dtype, shape, offset in packed["index"]:
        flat = packed["flat"][dtype]
        size = int(np.prod(shape)) if shape else 1
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = flat[offset : offset + size].reshape(shape).clone()
    return tree


def load(path: Path) -> dict:
    """A golden file, its packed states unpacked (the tests and verification.spread read goldens this way)."""
    golden = torch.load(path, weights_only=True)
    if "states" in golden:
        golden["states"] = {k: with_empty_adam(unpack(state)) for k, state in golden["states"].items()}
    return golden


def with_empty_adam(state: dict) -> dict:
    adam = state.setdefault("adam", {})
    for net in ("G", "D"):
        adam.setdefault(net, {})
    return state


def save(name: str, repository: str, files: list[str], params: dict, **payload) -> Path:
    """Write <out_dir()>/<name>.pt with its provenance (atomically: a partial file never stands as a golden)."""
    path = out_dir() / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".pt.partial")
    if "states" in payload:
        payload["states"] = {k: pack(state) for k, state in payload["states"].items()}
    torch.save({"meta": provenance(repository, files, name), "params": json.dumps(params), **payload}, partial)
    os.replace(partial, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def project_commit() -> str:
    """HEAD of the project, '+dirty' when verification/, facegan/ or models/ differ from it (a golden is only
    proof when it came from committed code)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "verification", "facegan", "models"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
