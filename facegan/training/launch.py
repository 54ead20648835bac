"""Where a stage's processes run: one process, N data-parallel processes on this node, or N nodes.

`dvc exp run -S placement.gpus=8` is all it takes: the train stage, started by DVC as one process,
relaunches itself under torch's elastic launcher (`python -m torch.distributed.run`) when the
placement asks for more than one process, and waits for it. Each process then finds its rank in
torchrun's environment (facegan/training/distributed.py), splits the global batch and averages the
gradients, so the weights are those one process would train. Several nodes use torchrun's c10d
rendezvous at `placement.rdzv_endpoint`: node 0 runs `dvc repro train-<model>` and the other nodes
the stage command `python -m stages.train <model>` with the same params (README: a SLURM script).

`placement.gpu` pins a single-process run to one GPU through CUDA_VISIBLE_DEVICES, so that queued
experiments (`dvc exp run --queue -S model=<m> -S placement.gpu=<i>`) train side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys

from facegan.errors import UserError
from facegan.handoff import PlacementView

UNDER_TORCHRUN = "LOCAL_RANK"  # torchrun sets it in every process it starts


def torchrun_command(placement: PlacementView, module: str, args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={placement.gpus}"]
    if placement.nnodes > 1:
        if not placement.rdzv_endpoint:
            raise UserError("placement.nnodes > 1 needs placement.rdzv_endpoint (host:port of node 0)")
        command += [
            f"--nnodes={placement.nnodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={placement.rdzv_endpoint}",
            f"--rdzv_id=facegan-{'-'.join(args)}",
        ]
    else:
        command += ["--standalone", "--nnodes=1"]
    return command + ["-m", module, *args]


def under_torchrun() -> bool:
    """Whether this process is one of the processes torchrun started (not the stage that launched them)."""
    return os.environ.get(UNDER_TORCHRUN) is not None


def relaunch_if_distributed(placement: PlacementView, module: str, args: list[str]) -> int | None:
    """Run `module args` under torchrun and return its exit status when the placement wants several
    processes and this is not one of them already; None when this process should do the work itself."""
    if under_torchrun() or (placement.gpus == 1 and placement.nnodes == 1):
        return None
    return subprocess.run(torchrun_command(placement, module, args)).returncode


def pin_gpu(placement: PlacementView) -> None:
    """A single process on `placement.gpu` (must run before CUDA is first used)."""
    if placement.gpu >= 0 and not under_torchrun():
        os.environ["CUDA_VISIBLE_DEVICES"] = str(placement.gpu)
