"""`python -m facegan.tune <model>`: an Optuna study of one model's hyper-parameters.

The search space is `tune.space.<model>` in params.yaml: keys of the model's section (dotted, e.g.
`loss.r1_gamma`), each `[log, low, high]`, `[uniform, low, high]` or `[choice, a, b, ...]`.
Each trial is a short training run as a DVC experiment:

    dvc exp run train-<model> --name tune-<model>-<tag>-<n> -S models.<model>.<key>=<value> ...
                              -S models.<model>.kimg=<tune.kimg> -S train.snapshot_kimg=<tune.snapshot_kimg>

(written under `profiles.<profile>.` where the active profile sets a key, so that the profile does not
shadow it). While it trains, this process scores every snapshot the run writes with the FID of
the evaluate stage's snapshot curve (the same network, reference statistics and latents, on
`tune.num_gen` images) and reports it to Optuna; a trial whose FID at a snapshot is worse than
the median of the earlier trials at the same snapshot (Optuna's median pruner, after
`tune.startup_trials` trials and `tune.warmup_kimg`) is stopped there. A trial that trains to
`tune.kimg` is scored by its final G_ema's FID, the fixed-budget score the TPE sampler minimises.

Writes tune/<model>/: study.json (facegan.handoff.TuneStudy, read by the report), best.yaml (the
best trial's values as a params.yaml fragment), history.png and points.png (Optuna's optimisation
history and every trial's FID-vs-kimg points), study.db (Optuna's storage: an interrupted study
resumes where it stopped) and logs/trial-<n>.log. The workspace's params.yaml, dvc.lock and
outputs are put back as they were at the start; `dvc exp apply <best experiment>` takes the best
trial's run.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facegan import handoff, paths, settings
from facegan.checkpoint import RunLock
from facegan.errors import UserError, stage_main
from facegan.io import atomic_path, write_text
from facegan.metrics import labels
from facegan.params import DEFAULT_PATH, deep_merge, flatten, load_params, read_yaml

log = logging.getLogger(__name__)

KINDS = ("log", "uniform", "choice")
POLL_SECONDS = 1.0  # how often a running trial's snapshots are looked for
STOP_GRACE_SECONDS = 60  # a pruned trial gets this long to stop on SIGINT before SIGKILL
FAILURES_IN_A_ROW = 3  # the study stops: the setup, not the params, is failing


# ------------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Dimension:
    """One searched key of a model's section."""

    key: str  # dotted, under models.<model>
    kind: str  # log | uniform | choice
    values: tuple  # (low, high), or the choices
    integer: bool  # the key holds an int: sample ints

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.integer:
            return trial.suggest_int(self.key, int(low), int(high), log=self.kind == "log")
        return trial.suggest_float(self.key, float(low), float(high), log=self.kind == "log")


def lookup(section: dict, dotted: str):
    node = section
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def parse_space(model: str, space: dict, section: dict) -> list[Dimension]:
    """tune.space.<model>, checked against the model's section: one-line errors naming the key."""
    if model not in space or not isinstance(space[model], dict) or not space[model]:
        raise UserError(
            f"tune.space has no search space for {model}: add tune.space.{model} to params.yaml, e.g. "
            f"{{lr_g: [log, 1.0e-4, 1.0e-2]}}"
        )
    dims = []
    for key, spec in space[model].items():
        where = f"tune.space.{model}.{key}"
        try:
            current = lookup(section, key)
        except KeyError:
            raise UserError(
                f"{where}: models.{model} has no key '{key}' (write its dotted path, e.g. loss.r1_gamma)"
            ) from None
        if isinstance(current, (dict, list, str, bool)):
            raise UserError(f"{where}: models.{model}.{key} is not a number, so it cannot be searched")
        if not isinstance(spec, list) or len(spec) < 3 or spec[0] not in KINDS:
            raise UserError(f"{where} = {spec!r}: write [log, low, high], [uniform, low, high] or [choice, a, b, ...]")
        kind, values = spec[0], tuple(spec[1:])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise UserError(f"{where} = {spec!r}: the bounds or choices must be numbers")
        integer = isinstance(current, int)
        if integer and not all(float(v).is_integer() for v in values):
            raise UserError(f"{where} = {spec!r}: models.{model}.{key} is an integer, so its values must be too")
        if kind != "choice":
            if len(values) != 2 or not values[0] < values[1]:
                raise UserError(f"{where} = {spec!r}: write [{kind}, low, high] with low < high")
            if kind == "log" and values[0] <= 0:
                raise UserError(f"{where} = {spec!r}: a log range needs a positive low bound")
        dims.append(Dimension(key, kind, tuple(int(v) if integer else v for v in values), integer))
    return dims


# ------------------------------------------------------------------------------------------------
# A trial's params: where each value is written so that the active profile does not shadow it


def param_path(raw: dict, dotted: str) -> str:
    """`dotted` or, where the active profile sets it, `profiles.<profile>.<dotted>`."""
    profile = raw.get("profile", "study")
    override = flatten((raw.get("profiles") or {}).get(profile) or {})
    return f"profiles.{profile}.{dotted}" if dotted in override else dotted


def nest(flat: dict) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def trial_settings(model: str, tune: dict, values: dict) -> dict:
    """Every param a trial sets (dotted, as if no profile were active)."""
    settings = {"model": model, "train.snapshot_kimg": tune["snapshot_kimg"], "train.snapshot_level_ends": False}
    settings[f"models.{model}.kimg"] = tune["kimg"]
    settings.update({f"models.{model}.{key}": value for key, value in values.items()})
    return settings


def placed(raw: dict, settings: dict) -> dict:
    return {param_path(raw, key): value for key, value in settings.items()}


def set_flag(path: str, value) -> str:
    """One `-S` of dvc exp run (its values are YAML)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{path}={text.removesuffix('...').strip()}"


# ------------------------------------------------------------------------------------------------
# FID of a snapshot, exactly as the evaluate stage's FID-vs-kimg curve computes it


class SnapshotScorer:
    """The evaluate stage's snapshot FID (network, reference, latents) on `num_gen` images."""

    def __init__(self, model: str, params: dict, num_gen: int, reference_dir: Path = paths.REFERENCE_DIR):
        from facegan.device import resolve_device
        from facegan.metrics.evaluate import EvalSeeds
        from facegan.metrics.features import build_extractor
        from facegan.metrics.reference import load_features

        eval_params = settings.EvaluateSettings.model_validate(params["evaluate"])
        self.model, self.num_gen, self.batch_size = model, num_gen, eval_params.batch_size
        self.resolution = params["data"]["resolution"]
        self.device = resolve_device(eval_params.device)
        meta_file = reference_dir / "meta.json"
        if not meta_file.exists():
            raise UserError(f"{meta_file} is missing: run `dvc repro reference_stats` first")
        self.meta = handoff.ReferenceMeta.read(meta_file)
        self.extractor = build_extractor(eval_params.extractor, eval_params, self.device)
        if self.meta.extractor != self.extractor.kind or self.meta.resolution != self.resolution:
            raise UserError(
                f"reference statistics are {self.meta.extractor} at {self.meta.resolution}px, the params ask for "
                f"{self.extractor.kind} at {self.resolution}px: run `dvc repro reference_stats` first"
            )
        self.reference = load_features(reference_dir)
        self.seed = EvalSeeds.of(params["seed"], 1).snapshots

    def fid(self, weights: dict, arch: dict) -> float:
        import models
        from facegan.metrics.evaluate import generated_batches
        from facegan.metrics.features import extract
        from facegan.metrics.fid import fid_from_features

        G = models.from_snapshot(self.model, arch, self.resolution, weights).to(self.device)
        batches = generated_batches(G, self.num_gen, self.batch_size, self.seed, self.device)
        return float(fid_from_features(extract(batches, self.extractor), self.reference))


# ------------------------------------------------------------------------------------------------
# One trial: a DVC experiment, watched


@dataclass
class Watch:
    """A running trial's snapshots, scored as they appear (in the run's scratch folder while it trains,
    in runs/<model>/snapshots once it has finished)."""

    model: str
    since: float  # snapshots older than the trial are another run's
    folders: tuple[Path, ...] = ()
    seen: set[str] = field(default_factory=set)  # file names: a snapshot keeps its name when it moves
    points: dict[float, float] = field(default_factory=dict)  # kimg -> FID

    def new_snapshots(self) -> list[Path]:
        fresh = {}
        for folder in self.folders or self.default_folders():
            for snap in folder.glob("kimg*.pt"):
                try:
                    if snap.name not in self.seen and snap.stat().st_mtime >= self.since:
                        fresh[snap.name] = snap
                except FileNotFoundError:  # moved into runs/<model> meanwhile: found there next time
                    pass
        return [fresh[name] for name in sorted(fresh)]

    def default_folders(self) -> tuple[Path, ...]:
        from facegan.checkpoint import CHECKPOINT_ROOT

        return (*sorted((CHECKPOINT_ROOT / self.model).glob("*/snapshots")), paths.run_dir(self.model) / "snapshots")


def default_sigint() -> None:
    """In a trial's process: Ctrl-C's default action, which a shell's background job (`nohup`, `&`) would
    otherwise pass down ignored, so that `stop` reaches dvc as an interrupt instead of waiting out its grace."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(process: subprocess.Popen) -> None:
    """Stop a trial's `dvc exp run` and its stage like Ctrl-C would, then for good."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def last_error(log_file: Path) -> str:
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error:", "ERROR"))]
    return (errors or lines or ["no output"])[-1][:300]


@dataclass
class Trial:
    """What one trial ran and found."""

    number: int
    values: dict
    experiment: str
    state: str = "fail"
    fid: float | None = None
    points: dict[float, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def record(self) -> handoff.TuneTrial:
        return handoff.TuneTrial(
            number=self.number,
            state=self.state,
            params=self.values,
            fid=self.fid,
            points=[handoff.TunePoint(kimg=k, fid=v) for k, v in sorted(self.points.items())],
            experiment=self.experiment if self.state == "complete" else "",
            seconds=self.seconds,
            error=self.error,
        )


def run_trial(
    command: list[str],
    trial,
    watch: Watch,
    score: Callable[[Path], tuple[float, float]],
    snapshot_kimg: float,
    log_file: Path,
) -> str:
    """Run a trial's command, report each snapshot's FID at step = its snapshot index, and stop it when
    Optuna prunes it. Returns complete, pruned or fail (the command's exit status)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_sigint
        )
        try:
            while True:
                finished = process.poll() is not None
                for snap in watch.new_snapshots():
                    try:
                        kimg, fid = score(snap)
                    except UserError:
                        if snap.exists():
                            raise
                        continue  # it moved between listing and loading: found in its new folder next time
                    watch.seen.add(snap.name)
                    watch.points[kimg] = fid
                    # one step per snapshot index, the same for every trial whatever its batch size
                    trial.report(fid, step=int(math.floor(kimg / snapshot_kimg + 1e-9)))
                    log.info("trial %d at %.2f kimg: FID %.4g", trial.number, kimg, fid)
                    if not finished and trial.should_prune():
                        stop(process)
                        return "pruned"
                if finished:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            stop(process)
            raise
    return "complete" if process.returncode == 0 else "fail"


# ------------------------------------------------------------------------------------------------
# The study


@dataclass
class Workspace:
    """What the trials' `dvc exp run` change in the workspace, put back at the end."""

    files: dict[Path, bytes | None] = field(default_factory=dict)

    @classmethod
    def save(cls, *names: Path) -> Workspace:
        return cls({p: (p.read_bytes() if p.exists() else None) for p in names})

    def restore(self) -> None:
        for path, content in self.files.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        dvc("checkout", "--quiet", check=False)


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        line = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"`dvc {' '.join(args)}` failed: {line}")
    return done


def check_project() -> None:
    if not Path("dvc.yaml").exists():
        raise UserError("no dvc.yaml here: run `python -m facegan.tune` from the repository root")
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True)
    if inside.returncode != 0:
        raise UserError("trials are DVC experiments, which need a git repository: run from a git clone")


def study_config(model: str, tune: dict, space: list) -> dict:
    """What makes two runs of the command one study: its trials are comparable only under the same."""
    keys = ("kimg", "snapshot_kimg", "num_gen")
    return {"model": model, **{k: tune[k] for k in keys}, "space": space}


def open_study(model: str, tune: dict, config: dict, seed: int, storage: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    warmup_steps = math.ceil(tune["warmup_kimg"] / tune["snapshot_kimg"] - 1e-9)
    study = optuna.create_study(
        storage=f"sqlite:///{storage}",
        study_name=model,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, tune["startup_trials"])),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tune["startup_trials"], n_warmup_steps=warmup_steps),
    )
    if "config" not in study.user_attrs:
        study.set_user_attr("config", config)
        study.set_user_attr("tag", time.strftime("%m%d%H%M%S"))
    elif study.user_attrs["config"] != config:
        raise UserError(
            f"{storage} holds a study run with other tune params ({study.user_attrs['config']}): restore "
            "them, or move that file away to start a new study"
        )
    for frozen in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)  # its process died with the last run
    return study


def tune_model(model: str, trials: int | None = None, params_file: Path = DEFAULT_PATH) -> handoff.TuneStudy:
    check_project()
    params = load_params(params_file)
    if model not in params["models"]:
        raise UserError(f"unknown model '{model}': the study's models are {', '.join(params['models'])}")
    tune = params["tune"]
    dims = parse_space(model, tune["space"], params["models"][model])
    space = {d.key: [d.kind, *d.values] for d in dims}
    folder = paths.TUNE_DIR / model
    with RunLock(folder, f"{model}'s tune study (python -m facegan.tune)"):
        study = open_study(model, tune, study_config(model, tune, space), params["seed"], folder / "study.db")
        dvc("repro", "--quiet", "reference_stats")  # what every score compares with
        scorer = SnapshotScorer(model, params, tune["num_gen"])
        raw = read_yaml(params_file)
        workspace = Workspace.save(Path(params_file), Path("dvc.lock"))
        study_run = TuneRun(model, study.user_attrs["tag"], tune, raw, scorer, folder)
        failures = 0
        try:
            todo = trials if trials is not None else tune["trials"] - len(study.trials)
            for _ in range(max(0, todo)):
                trial = study.ask()
                values = {d.key: d.suggest(trial) for d in dims}
                outcome = one_trial(study_run, trial, values)
                trial.set_user_attr("record", outcome.record().to_dict())  # before tell: a told trial is final
                study.tell(trial, outcome.fid if outcome.state == "complete" else None, state=state_of(outcome.state))
                failures = failures + 1 if outcome.state == "fail" else 0
                if failures >= FAILURES_IN_A_ROW:
                    raise UserError(
                        f"{failures} trials in a row failed, the last with: {outcome.error} "
                        f"(logs in {folder / 'logs'}): fix that, then re-run to resume the study"
                    )
        finally:
            workspace.restore()
        result = summarise(model, study, tune, space, params["models"][model], scorer.meta.label_key)
        write_outputs(folder, study, result)
    return result


def state_of(state: str):
    from optuna.trial import TrialState

    return {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[state]


@dataclass(frozen=True)
class TuneRun:
    """What every trial of one study shares."""

    model: str
    tag: str  # the study's tag in its trials' experiment names
    tune: dict  # params.yaml's `tune` section
    raw: dict  # params.yaml as written (the trials' -S flags are placed in it)
    scorer: SnapshotScorer
    folder: Path  # tune/<model>/: the study, its logs and results


def one_trial(run: TuneRun, trial, values: dict) -> Trial:
    """Train one trial as a DVC experiment while scoring its snapshots; its final G_ema scores the trial."""
    model, tune, raw, scorer, folder = run.model, run.tune, run.raw, run.scorer, run.folder
    name = f"tune-{model}-{run.tag}-{trial.number}"
    settings = trial_settings(model, tune, values)
    merged = deep_merge(load_raw_merged(raw), nest(settings))
    arch = merged["models"][model]["arch"]
    command = [sys.executable, "-m", "dvc", "exp", "run", f"train-{model}", "--name", name]
    for key, value in placed(raw, settings).items():
        command += ["-S", set_flag(key, value)]
    record = Trial(trial.number, values, name)
    watch = Watch(model, since=time.time() - 1)
    started = time.perf_counter()
    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def score(snap: Path) -> tuple[float, float]:
        from facegan import checkpoint

        weights = checkpoint.load(snap)
        return float(weights["kimg"]), scorer.fid(weights, arch)

    record.state = run_trial(
        command, trial, watch, score, tune["snapshot_kimg"], folder / "logs" / f"trial-{trial.number}.log"
    )
    record.points, record.seconds = dict(watch.points), time.perf_counter() - started
    if record.state == "pruned":  # stopped as DVC was saving it: no experiment of a pruned trial stays
        dvc("exp", "remove", name, check=False)
    if record.state == "fail":
        record.error = last_error(folder / "logs" / f"trial-{trial.number}.log")
    elif record.state == "complete":
        stats = handoff.read_train_stats(paths.run_dir(model) / "train_stats.json")
        final = record.points.get(stats.kimg)
        record.fid = final if final is not None else score(paths.run_dir(model) / "G_ema.pt")[1]
    log.info("trial %d: %s%s", trial.number, record.state, f", FID {record.fid:.4g}" if record.fid else "")
    return record


def load_raw_merged(raw: dict) -> dict:
    """params.yaml with its active profile applied (the trial's settings go on top)."""
    merged = copy.deepcopy(raw)
    profile = raw.get("profile", "study")
    return deep_merge(merged, (raw.get("profiles") or {}).get(profile) or {})


def summarise(model: str, study, tune: dict, space: dict, section: dict, label_key: str) -> handoff.TuneStudy:
    records = [
        handoff.TuneTrial.from_dict(t.user_attrs["record"], f"study.db trial {t.number}")
        for t in study.trials
        if "record" in t.user_attrs
    ]
    complete = [r for r in records if r.state == "complete" and r.fid is not None]
    best = min(complete, key=lambda r: r.fid) if complete else None
    return handoff.TuneStudy(
        model=model,
        label_key=label_key,
        kimg=tune["kimg"],
        num_gen=tune["num_gen"],
        space=space,
        baseline={key: lookup(section, key) for key in space},
        best_number=best.number if best else None,
        best_fid=best.fid if best else None,
        best_params=dict(best.params) if best else {},
        best_experiment=best.experiment if best else "",
        trials=records,
        plots=["history.png", "points.png"] if records else [],
    )


def write_outputs(folder: Path, study, result: handoff.TuneStudy) -> None:
    result.write(folder / "study.json")
    best = {"models": {result.model: nest(result.best_params)}} if result.best_params else {}
    header = (
        f"# best of {len(result.trials)} trials of `python -m facegan.tune {result.model}` (FID {result.best_fid:.4g} "
        f"at {result.kimg:g} kimg): copy into params.yaml, or `dvc exp apply {result.best_experiment}`\n"
        if result.best_params
        else "# no trial has finished yet\n"
    )
    write_text(folder / "best.yaml", header + (yaml.safe_dump(best, sort_keys=False) if best else ""))
    if result.trials:
        plot(study, folder, labels.label(result.label_key).axis)


def plot(study, folder: Path, axis: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, draw in (
            ("history.png", optuna_plots.plot_optimization_history),
            ("points.png", optuna_plots.plot_intermediate_values),
        ):
            axes = draw(study)
            axes.set_ylabel(axis)
            if name == "points.png":
                axes.set_xlabel("snapshot (every tune.snapshot_kimg)")
            with atomic_path(folder / name) as tmp:
                axes.figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)


# ------------------------------------------------------------------------------------------------
# Command line


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m facegan.tune", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model whose tune.space to search, e.g. dcgan")
    parser.add_argument("--trials", type=int, help="trials to run now (default: up to tune.trials in the study)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = tune_model(args.model, args.trials)
    if result.best_number is None:
        print(f"no trial of {args.model} finished: see tune/{args.model}/logs/")
        return
    print(
        f"best of {len(result.trials)} trials: #{result.best_number}, FID {result.best_fid:.4g} with "
        + ", ".join(f"{k}={v:.4g}" for k, v in result.best_params.items())
        + f"; tune/{args.model}/best.yaml; `dvc exp apply {result.best_experiment}` to take its run"
    )


if __name__ == "__main__":
    main()
