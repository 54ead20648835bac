"""Where each stage reads and writes; dvc.yaml names the same paths."""
from pathlib import Path

RAW_DIR = Path("data/raw")
CACHE_DIR = Path("data/faces")
REFERENCE_DIR = Path("data/reference")
CONFIG_DIR = Path("runs/config")  # each stage's params view, written by `configure`
REPORTS_DIR = Path("reports")


def run_dir(model: str) -> Path:
    return Path("runs") / model


def eval_dir(model: str) -> Path:
    return Path("evals") / model


def metrics_file(model: str) -> Path:
    return Path("metrics") / f"{model}.json"
