"""Stage `evaluate-<model>`: every metric of a trained generator, FID along its snapshots, and its pictures.

Writes metrics/<model>.json (facegan.handoff.ModelSummary: the few numbers `dvc exp show` lists) and
evals/<model>/:
  metrics.json       facegan.handoff.ModelMetrics: one section per metric (fid: mean/std over evaluate.fid_seeds
                     generated sets and FID-infinity; kid; fd_dinov2; knn: precision/recall/density/coverage;
                     ppl), each with its sample count and label key
  fid_vs_kimg.json   one FidPoint per training snapshot
  losses.json        the adversarial losses along training (for `dvc plots`)
  samples.png        a grid of fixed latents
  truncation.png     style-based models: rows of latents, columns of evaluate.truncation_psis
  interpolation.png  slerp in Z (row 1) and, for style-based models, linear interpolation in W (row 2)
  res<R>.png         progressive models: the last training grid at each resolution
The work is facegan/metrics/evaluate.py.
"""

from __future__ import annotations

from PIL import Image

from facegan import handoff, paths, stage_params
from facegan.errors import stage_main, stop_at_once_on_interrupt
from facegan.io import ExclusiveLock, atomic_dir, atomic_path
from facegan.metrics.evaluate import evaluate_run
from facegan.training.launch import pin_gpu
from stages import start_model_stage


@stage_main(exclusive=True, resumable=False)
def main() -> None:
    model = start_model_stage(__doc__)
    # training replaces runs/<model> at its end: never evaluate half of one run and half of the next
    with (
        ExclusiveLock(paths.run_lock(model), f"evaluating {model} from {paths.run_dir(model)}"),
        stop_at_once_on_interrupt(f"evaluate-{model}"),  # nothing is published before the block ends
    ):
        view = stage_params.load_model(model)
        pin_gpu(stage_params.load("placement"))
        result = evaluate_run(view, stage_params.load("evaluate"), paths.run_dir(model), paths.REFERENCE_DIR)
    # metrics/<model>.json, which `dvc exp show` reads, is published last and only once evals/<model> is
    with atomic_path(paths.metrics_file(model)) as summary, atomic_dir(paths.eval_dir(model)) as out:
        handoff.write_list(out / "fid_vs_kimg.json", result.curve)
        handoff.write_list(out / "losses.json", result.losses)
        for name, picture in result.pictures.items():
            Image.fromarray(picture).save(out / f"{name}.png", format="PNG")
        for name, grid in result.copied.items():
            (out / name).write_bytes(grid)
        result.metrics.write(out / "metrics.json")
        handoff.ModelSummary.of(result.metrics, result.stats).write(summary)


if __name__ == "__main__":
    main()
