"""Stage `train-<model>`: train one GAN of the study on the face cache.

Writes runs/<model>/: G_ema.pt (final EMA generator), snapshots/ (G_ema every
train.snapshot_kimg), samples/ (grids of fixed latents, `res<RRRR>_kimg<kimg>.png`: one every
train.sample_kimg and one at the end of each resolution, so the last `res0064_*` grid is the 64x64
result of a progressive model) and train_stats.json (facegan.handoff.TrainedRun); dvclive
metrics go to dvclive/<model>/. A model that `model` does not select gets a train_stats.json
saying so (facegan.handoff.SkippedRun), and no weights. Resumable: an interrupted run continues
from checkpoints/<model>/<run key>/last.pt. Several GPUs or nodes:
`placement.gpus` / `placement.nnodes` (facegan/training/launch.py); the global batch is split.
Holds runs/locks/run-<model>.lock throughout, as evaluate-<model> does while it reads runs/<model>.
"""

from __future__ import annotations

import contextlib

from facegan import paths, stage_params
from facegan.errors import UserError, stage_main
from facegan.io import ExclusiveLock
from facegan.training.launch import pin_gpu, relaunch_if_distributed, under_torchrun
from facegan.training.loop import train
from facegan.training.run_files import write_skipped
from stages import start_model_stage


@stage_main
def main() -> None:
    model = start_model_stage(__doc__)
    # torchrun's processes run under the lock their launcher (this same stage) holds
    lock = ExclusiveLock(paths.run_lock(model), f"training {model}")
    with contextlib.nullcontext() if under_torchrun() else lock:
        train_model(model)


def train_model(model: str) -> None:
    view = stage_params.load_model(model)
    if not view.selected:
        write_skipped(model, view.skip_reason, paths.run_dir(model), paths.live_dir(model))
        return
    placement = stage_params.load("placement")
    status = relaunch_if_distributed(placement, "stages.train", [model])
    if status is not None:  # the torchrun processes did the work
        if status != 0:
            raise UserError(f"distributed training of {model} failed (exit {status}): see the ranks' lines above")
        return
    pin_gpu(placement)
    stats = train(view, paths.CACHE_DIR, paths.run_dir(model), live_dir=paths.live_dir(model))
    if stats is None:
        raise UserError(f"training of {model} stopped early: re-run to resume")


if __name__ == "__main__":
    main()
