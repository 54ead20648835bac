"""Where each stage reads and writes; facegan/pipeline.py writes the same paths into dvc.yaml."""

from pathlib import Path

RAW_DIR = Path("data/raw")
CACHE_DIR = Path("data/faces")
REFERENCE_DIR = Path("data/reference")
CONFIG_DIR = Path("runs/config")  # each stage's params view, written by `configure`
REPORTS_DIR = Path("reports")
PREPROCESS_REPORT = REPORTS_DIR / "preprocess.json"
TUNE_DIR = Path("tune")  # python -m facegan.tune: one folder per model (git-tracked results, ignored study.db)


def run_dir(model: str) -> Path:
    return Path("runs") / model


def run_lock(model: str) -> Path:
    """Held by train-<model> for its whole run (it replaces runs/<model> at its end) and by evaluate-<model>
    while it reads it: the two never overlap."""
    return Path("runs/locks") / f"run-{model}.lock"


def live_dir(model: str) -> Path:
    """dvclive's folder for a model: outside runs/<model>, since DVC outputs may not overlap."""
    return Path("dvclive") / model


def eval_dir(model: str) -> Path:
    return Path("evals") / model


def metrics_file(model: str) -> Path:
    """The small per-model metrics file `dvc exp show` and `dvc metrics show` read (handoff.ModelSummary)."""
    return Path("metrics") / f"{model}.json"


def full_metrics_file(model: str) -> Path:
    """Every number of a model's evaluation with its sample counts and labels (handoff.ModelMetrics)."""
    return eval_dir(model) / "metrics.json"
