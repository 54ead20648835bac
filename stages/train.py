"""Stage `train@<model>`: train one GAN of the study on the face cache.

Writes runs/<model>/: G_ema.pt (final EMA generator), snapshots/ (G_ema every
train.snapshot_kimg), samples/ (grids of fixed latents, `res<RRRR>_kimg<kimg>.png`: one every
train.sample_kimg and one at the end of each resolution, so the last `res0064_*` grid is the 64x64
result of a progressive model) and train_stats.json; dvclive metrics go to dvclive/<model>/.
A model not selected by `model` or not implemented yet gets a train_stats.json saying so, and no
weights. Resumable: an interrupted run continues from checkpoints/<model>/<run key>/last.pt.
Multi-GPU: `torchrun --nproc_per_node=N -m stages.train <model>` (the global batch is split).
"""
from __future__ import annotations

import logging
from pathlib import Path

from facegan import paths, stage_params
from facegan.errors import UserError, stage_main
from facegan.io import atomic_dir, write_json
from stages import start_model_stage


def live_dir(model: str) -> Path:
    """dvclive's folder for a model (dvc.yaml's train stage lists its metrics and plots)."""
    return Path("dvclive") / model


def write_placeholder(model: str, status: str, reason: str) -> None:
    with atomic_dir(paths.run_dir(model)) as out:
        write_json(out / "train_stats.json", {"status": status, "model": model, "reason": reason})
    # dvc.yaml declares the dvclive metrics of every train stage: leave an empty summary
    write_json(live_dir(model) / "metrics.json", {"status": status})
    (live_dir(model) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)


@stage_main
def main() -> None:
    model = start_model_stage(__doc__)
    params = stage_params.load(model)
    if not params["selected"]:
        write_placeholder(model, "skipped", params["skip_reason"])
        return

    import models  # torch import happens only for models that train
    from facegan.training.loop import RunConfig, train

    try:
        models.get_spec(model)
    except models.NotImplementedModel as err:
        logging.warning("%s", err)
        write_placeholder(model, "not_implemented", str(err))
        return
    cfg = RunConfig(model=model, model_params=params["models"][model], train=params["train"],
                    seed=params["seed"], resolution=params["data"]["resolution"])
    stats = train(cfg, paths.CACHE_DIR, paths.run_dir(model), live_dir=live_dir(model))
    if stats["status"] != "trained":
        raise UserError(f"training of {model} stopped early: re-run to resume")


if __name__ == "__main__":
    main()
