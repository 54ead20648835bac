"""The train stage's library: a model's params view in, a finished run folder (or a skip note) out."""

from __future__ import annotations

from pathlib import Path

from facegan import handoff
from facegan.io import atomic_dir, write_json
from facegan.training.loop import RunConfig, train


def write_skipped(model: str, reason: str, run_dir: Path, live_dir: Path) -> None:
    """A model this experiment does not train: its stats say why, and no weights."""
    with atomic_dir(run_dir) as out:
        handoff.SkippedRun(status="skipped", model=model, reason=reason).write(out / "train_stats.json")
    # dvc.yaml declares the dvclive metrics and plots of every train stage: leave them empty
    write_json(live_dir / "metrics.json", {"status": "skipped"})
    (live_dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)


def train_model(view: handoff.ModelView, cache_dir: Path, run_dir: Path, live_dir: Path) -> handoff.TrainedRun | None:
    """Train the view's model to its budget; None when the run stopped early (it resumes next time)."""
    cfg = RunConfig(
        model=view.model, model_params=view.params, train=view.train, seed=view.seed, resolution=view.resolution
    )
    return train(cfg, cache_dir, run_dir, live_dir=live_dir)
