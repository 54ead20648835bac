"""What every step-level golden file holds, and how the verification scripts write it.

A golden file (tests/golden/<name>.pt, read with torch.load(weights_only=True)) is a dict:
  meta       {"repository", "commit", "files", "command", "tolerance"}: where the numbers come from
  model      the project's model name;  params: its models.<model> params (JSON text) as the test runs them
  seed       the run's seed (the loop draws its step inputs from it: facegan.training.step.step_draws)
  faces      uint8 (N, H, W, 3): the face cache the run trains on
  init       {"G": state_dict, "D": state_dict} in the project's names, copied into the official networks
  steps      per step, per phase that ran: the official loss terms and, for the first step, gradients
  final      {"G": state_dict, "D": state_dict} after the steps, in the project's names
plus per-model extras. The inputs (faces, latents, flips, reals' indices, every global random state)
are the project's own, handed to the official code, so that any difference is a difference of the
computation, not of the draws.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from facegan.data.synthetic import render_face
from verification.official import commit_of

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "golden"
GRADIENT_SAMPLE = 256  # gradient values kept per network: a strided sample over the flattened gradient


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


def command() -> str:
    return "python -m " + Path(sys.argv[0]).with_suffix("").relative_to(Path.cwd()).as_posix().replace("/", ".")


def save(name: str, repository: str, files: list[str], tolerance: str, params: dict, **payload) -> Path:
    """Write tests/golden/<name>.pt with its provenance."""
    meta = {
        "repository": repository,
        "commit": commit_of(repository),
        "files": files,
        "command": command(),
        "tolerance": tolerance,
        "torch": str(torch.__version__),
        "project_commit": _project_commit(),
    }
    path = GOLDEN_DIR / f"{name}.pt"
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "params": json.dumps(params), **payload}, path)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1024:.0f} KiB)")
    return path


def _project_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
