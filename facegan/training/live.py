"""Training metrics through dvclive, so `dvc plots show` / `dvc exp show` see them.

The train stage writes to `dvclive/<model>/` (dvc.yaml lists its metrics.json and plots). The
directory is outside `runs/<model>` because DVC outputs may not overlap. dvclive is optional for
scripts that run without it (benchmarks on a bare GPU box): without it, or when it cannot start,
the logger says so with logging.warning, train_stats.json records `dvclive: false`, and the run's
own train_stats.json history is unaffected.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class LiveLog:
    def __init__(self, directory: Path | None, resume: bool, enabled: bool = True):
        self.live = None
        if directory is None or not enabled:
            return
        try:
            from dvclive import Live
        except ImportError:
            log.warning(
                "dvclive is not installed: training metrics are not logged to %s (pip install dvclive)", directory
            )
            return
        # dvcyaml=None: the stage's dvc.yaml already declares these outputs; save_dvc_exp=False:
        # the run is a stage of `dvc repro`/`dvc exp run`, which records the experiment itself.
        try:
            self.live = Live(dir=str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None)
        except Exception as err:  # dvclive 3.49 raises from an empty git repo (no commit yet)
            log.warning(
                "dvclive could not start (%s: %s): training metrics are not logged to %s; "
                "train_stats.json still has them",
                type(err).__name__,
                err,
                directory,
            )

    @property
    def enabled(self) -> bool:
        return self.live is not None

    def log(self, step: int, metrics: dict) -> None:
        if self.live is None:
            return
        self.live.step = step
        for name, value in metrics.items():
            if value is not None:
                self.live.log_metric(name, float(value))
        self.live.next_step()  # writes the row; step is set explicitly above, so resume stays aligned

    def summary(self, values: dict) -> None:
        if self.live is None:
            return
        self.live.summary.update({k: v for k, v in values.items() if v is not None})
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
