"""The JSON files stages hand to each other, as declared shapes.

Each file a stage writes for another stage to read is a class here (a strict, closed, frozen pydantic
model, like facegan.settings' classes, which the views carry); it is written with
`write()` and read with `read()`, never as a bare dict. Reading checks the file against the
declared shape: a missing key, an unknown key or a value of another type is a one-line
`HandoffError` naming the file, the keys and the stage to re-run, instead of a silent `.get()`
default further down, where a writer's renamed key would go unnoticed.

  file                                  shape                        written by     read by
  runs/config/<view>.json               DownloadView ... ReportView  configure      every stage
  data/raw/SOURCE.json                  RawSource                    download       preprocess
  data/faces/meta.json                  FaceCacheMeta                preprocess     train-*, reference_stats, ...
  runs/<model>/train_stats.json         TrainedRun | SkippedRun      train-*        evaluate-*, report
  evals/<model>/metrics.json            ModelMetrics | SkippedMetrics evaluate-*    report
  metrics/<model>.json                  ModelSummary                 evaluate-*     dvc metrics, dvc exp show
  evals/<model>/fid_vs_kimg.json        list[FidPoint]               evaluate-*     report, dvc plots
  evals/<model>/losses.json             list[LossPoint]              evaluate-*     dvc plots
  data/reference/meta.json              ReferenceMeta                reference_stats evaluate-*, report
  tune/<model>/study.json               TuneStudy                    facegan.tune   report
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import SerializeAsAny

from facegan import settings
from facegan.errors import UserError
from facegan.io import read_json, write_json
from facegan.problems import Problem, one_line

T = TypeVar("T", bound="Handoff")


class HandoffError(UserError):
    """A hand-off file does not have its declared shape (written by other code, or edited)."""


class Handoff(pydantic.BaseModel):
    """Base of every hand-off shape: exact keys and strict types on read, plain JSON on write. A pydantic
    model, like facegan.settings' classes: one way to declare and check a shape in the project."""

    model_config = pydantic.ConfigDict(strict=True, extra="forbid", frozen=True)
    writer: ClassVar[str] = "its stage"  # the `dvc repro` target that writes this file

    @classmethod
    def rerun(cls) -> str:
        """The command that writes this file again."""
        return f"dvc repro {cls.writer}"

    @classmethod
    def from_dict(cls: type[T], data: Any, source: str | Path) -> T:
        if not isinstance(data, dict):
            raise HandoffError(f"{source} is not a {cls.__name__} (a JSON object): re-run `{cls.rerun()}`")
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as err:
            raise HandoffError(one_line(err, lambda problem: cls._problem(problem, source))) from None

    @classmethod
    def _problem(cls, problem: Problem, source: str | Path) -> str:
        """A file's problem as one line: its missing and unknown keys, or its first value of another type;
        either way, the stage that writes it again."""
        if problem.missing or problem.unknown:
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(problem.missing)}" if problem.missing else "",
                    f"unknown {', '.join(problem.unknown)}" if problem.unknown else "",
                )
                if part
            )
            return (
                f"{source} does not have the shape of {cls.__name__} ({detail}): "
                f"it was written by other code; re-run `{cls.rerun()}`"
            )
        return (
            f"{source}: {cls.__name__}.{problem.key} {problem.message.lower()}, got {problem.input!r:.60}: "
            f"re-run `{cls.rerun()}`"
        )

    def to_dict(self) -> dict:
        return self.model_dump()

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(read_json(path), path)


def write_list(path: str | Path, items: list[Handoff]) -> None:
    write_json(path, [item.to_dict() for item in items])


def read_list(cls: type[T], path: str | Path) -> list[T]:
    data = read_json(path)
    if not isinstance(data, list):
        raise HandoffError(f"{path} is not a list of {cls.__name__}: re-run `{cls.rerun()}`")
    return [cls.from_dict(item, f"{path}[{i}]") for i, item in enumerate(data)]


# ------------------------------------------------------------------------------------------------
# runs/config/<view>.json: each stage's effective params, written by `configure`


class DownloadView(Handoff):
    writer: ClassVar[str] = "configure"
    seed: int
    data: settings.DataSettings


class PreprocessView(Handoff):
    writer: ClassVar[str] = "configure"
    data: settings.DataSettings


class ReferenceView(Handoff):
    writer: ClassVar[str] = "configure"
    resolution: int  # data.resolution: the cache the statistics must come from
    evaluate: settings.EvaluateSettings


class EvaluateView(Handoff):
    writer: ClassVar[str] = "configure"
    seed: int
    evaluate: settings.EvaluateSettings


class PlacementView(Handoff):
    """Where the train and evaluate stages run. Read by them but not a DVC dependency of theirs, since
    nothing they compute depends on it (tests/test_scale.py: 2 processes train the weights 1 does)."""

    writer: ClassVar[str] = "configure"
    gpus: int
    nnodes: int
    rdzv_endpoint: str
    gpu: int


class ModelView(Handoff):
    """One model's training params; `selected` says whether this experiment trains it."""

    writer: ClassVar[str] = "configure"
    model: str
    selected: bool
    skip_reason: str
    seed: int
    resolution: int
    train: settings.TrainSettings
    params: SerializeAsAny[settings.ModelSettings]  # models.<model>, profile applied, as its own class

    @pydantic.model_validator(mode="before")
    @classmethod
    def _model_section_as_its_class(cls, data: Any) -> Any:
        """`params` as the model's own settings class (its arch, its growing schedule), not the base."""
        if isinstance(data, dict) and isinstance(data.get("params"), dict) and isinstance(data.get("model"), str):
            try:
                section = settings.model_settings_class(data["model"])
            except KeyError:
                return data  # an unknown model: the base class says what is wrong
            data = {**data, "params": section.model_validate(data["params"])}
        return data

    def replaced(self, **fields: Any) -> ModelView:
        """This view with `fields` replaced (plain mappings allowed), validated like a read."""
        return type(self).model_validate({**self.to_dict(), **fields})

    @classmethod
    def selected_run(cls, model: str, params: dict, train: dict, seed: int, resolution: int) -> ModelView:
        """The view of a run to train (what benchmarks and tests train without a `configure` stage)."""
        return cls(
            model=model, selected=True, skip_reason="", seed=seed, resolution=resolution, train=train, params=params
        )


class ReportView(Handoff):
    writer: ClassVar[str] = "configure"
    profile: str
    model: str  # the selection (`all` or one name)
    models: list[str]  # every model of the study, in report order
    seed: int
    data: settings.DataSettings
    evaluate: settings.EvaluateSettings
    loss_types: dict[str, str]  # models.<name>.loss.type: the stability heuristics depend on it
    notes: list[str]  # warnings about the params, e.g. an edit the profile overrides


# ------------------------------------------------------------------------------------------------
# runs/<model>/train_stats.json


class HistoryRow(Handoff):
    """Training metrics averaged over one `train.log_kimg` interval."""

    writer: ClassVar[str] = "train-<model>"
    kimg: float
    step: int
    train_seconds: float
    img_per_s: float
    segment: str  # the schedule segment (train64, fade128, ...; facegan.training.progressive)
    level: int
    resolution: int
    alpha: float
    lr_g: float
    lr_d: float
    peak_memory_gib: float | None
    augment_p: float | None  # ADA's p at the row's end (None: the model trains without augmentation)
    losses: dict[str, float]  # loss terms by name, e.g. "D/adversarial", "D/r1" (facegan.training.phases)


class SegmentStats(Handoff):
    writer: ClassVar[str] = "train-<model>"
    seconds: float
    nimg: int
    steps: int
    batch_size: int
    img_per_s: float
    peak_memory_bytes: int | None


class ScheduleEntry(Handoff):
    writer: ClassVar[str] = "train-<model>"
    segment: str
    level: int
    resolution: int
    start_kimg: float
    end_kimg: float
    batch_size: int


class SkippedRun(Handoff):
    writer: ClassVar[str] = "train-<model>"
    status: Literal["skipped"]
    model: str
    reason: str


class TrainedRun(Handoff):
    writer: ClassVar[str] = "train-<model>"
    status: Literal["trained"]
    model: str
    paper: str
    resolution: int
    resolutions_reached: list[int]  # every level the schedule trained at (one for non-growing models)
    kimg: float
    steps: int
    batch_size: int  # of the final phase
    world_size: int
    train_seconds: float
    img_per_s: float
    device: str
    device_name: str
    precision: str
    peak_memory_bytes: int | None
    params_G: int
    params_D: int
    history: list[HistoryRow]
    schedule: list[ScheduleEntry]
    segments: dict[str, SegmentStats]  # time, images, steps and memory per schedule segment
    training_phases: list[str]  # the step's phases in order, e.g. ["Gmain", "Greg", "Dmain", "Dreg"]
    dvclive: bool
    kernel_fallbacks: dict[str, str]  # op -> the error that sent it from Triton to the reference path
    cache_fingerprint: str  # the face cache trained on (facegan.data.cache.fingerprint_of)
    augment: Literal["ada", "fixed", "cosine", "none"]  # models.<model>.augment.mode (facegan/training/ada.py)
    augment_p: float | None  # ADA's p at the end (None without augmentation)
    xflip: bool  # models.<model>.xflip: the reals were mirrored at random
    data_space: str  # the units D trained in (models.ModelSpec.data_space: unit = [-1, 1], imagenet)
    ema_kimg: float  # G EMA half-life at the end of training (R3GAN's grows on its cosine); 0: G_ema is G
    batchnorm: Literal["none", "re-estimated"]  # G_ema's BatchNorm statistics, re-estimated for its own weights
    stopped_by: Literal["kimg", "budget"]  # the kimg budget, or train.budget_minutes of training time first
    budget_minutes: float


def read_train_stats(path: str | Path) -> TrainedRun | SkippedRun:
    data = read_json(path)
    shape = SkippedRun if isinstance(data, dict) and data.get("status") == "skipped" else TrainedRun
    return shape.from_dict(data, path)


# ------------------------------------------------------------------------------------------------
# metrics/<model>.json and evals/<model>/*.json


class FidPoint(Handoff):
    """FID of one training snapshot (FID vs kimg)."""

    writer: ClassVar[str] = "evaluate-<model>"
    kimg: float
    train_hours: float | None
    fid: float
    num_gen: int
    label_key: str  # facegan.metrics.labels key of the extractor
    resolution: int  # the level the snapshot generated at (below the final one for a growing model)


class SkippedMetrics(Handoff):
    writer: ClassVar[str] = "evaluate-<model>"
    status: Literal["skipped"]
    model: str
    reason: str


class FidResult(Handoff):
    """FID of G_ema: over evaluate.fid_seeds generated sets, against the untrained generator, and at infinitely
    many images."""

    writer: ClassVar[str] = "evaluate-<model>"
    mean: float  # over the sets
    std: float  # sample std over the sets (0 for one set)
    values: list[float]  # one per set
    sets: int  # evaluate.fid_seeds: generated sets of num_gen images
    start: float | None  # FID of the untrained generator (the kimg-0 snapshot), at snapshot_num_gen
    start_n: int | None
    infinity: float  # FID-infinity (Chong & Forsyth 2020): FID(n)'s line in 1/n at 1/n = 0, from the first set
    slope: float  # of that line: FID(n) = infinity + slope / n
    by_n: dict[str, float]  # the points of the fit: str(n) -> FID of n of the first set's features


class KidResult(Handoff):
    writer: ClassVar[str] = "evaluate-<model>"
    value: float  # on the first set
    by_n: dict[str, float]  # at three of FID-infinity's n: str(n) -> KID of n of the first set's features


class DinoResult(Handoff):
    """FD-DINOv2: the Frechet distance of DINOv2 features, over the same sets as FID."""

    writer: ClassVar[str] = "evaluate-<model>"
    mean: float
    std: float
    values: list[float]
    label_key: str  # facegan.metrics.labels: dinov2 | dinov2_stand_in
    floor: Floor  # real-vs-real at num_gen, in DINOv2 features


class KnnResult(Handoff):
    """The k-NN metrics of the first set (facegan.metrics.precision_recall.KnnMetrics): precision and recall
    (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), from the same real k-NN radii."""

    writer: ClassVar[str] = "evaluate-<model>"
    precision: float
    recall: float
    density: float
    coverage: float
    num: int  # features per set
    k: int


class PplResult(Handoff):
    writer: ClassVar[str] = "evaluate-<model>"
    value: float  # the 1%/99% trimmed mean of the path lengths
    num: int  # latent pairs
    space: str  # z or w
    sampling: str  # end or full
    epsilon: float
    crop: bool  # evaluate.ppl_crop: the face crop of the official PPL
    label_key: str  # facegan.metrics.labels key of the LPIPS network


class ModelMetrics(Handoff):
    """evals/<model>/metrics.json: every number of a model's evaluation, one section per metric, each with
    its sample count and label."""

    writer: ClassVar[str] = "evaluate-<model>"
    status: Literal["trained"]
    model: str
    label_key: str  # facegan.metrics.labels key: how FID/KID/P&R are labelled wherever shown
    num_gen: int  # images per generated set
    num_ref: int  # real features of the reference
    floor: Floor  # real-vs-real FID/KID at num_gen, and the k-NN metrics' range there: the best this n can show
    fid: FidResult
    kid: KidResult
    fd_dinov2: DinoResult | None  # None: evaluate.dinov2 none
    knn: KnnResult
    feature_spread_ratio: float  # generated features' total variance / the real ones': far below 1 hints collapse
    ppl: PplResult
    eval_seconds: dict[str, float]
    seeds: dict[str, Any]


class ModelSummary(Handoff):
    """metrics/<model>.json: the columns of `dvc exp show` (all None for a model this experiment skipped).
    Labels and sample counts are in the full file (ModelMetrics) and the report."""

    writer: ClassVar[str] = "evaluate-<model>"
    fid: float | None
    fid_std: float | None
    fid_inf: float | None
    kid: float | None
    fd_dinov2: float | None  # labelled in the full file: a stand-in in the demo
    precision: float | None
    recall: float | None
    density: float | None
    coverage: float | None
    ppl: float | None
    kimg: float | None
    train_hours: float | None  # on the training device (GPU-hours on CUDA, CPU-hours on the CPU demo)

    @classmethod
    def of(cls, metrics: ModelMetrics | SkippedMetrics, stats: TrainedRun | SkippedRun) -> ModelSummary:
        if not isinstance(metrics, ModelMetrics) or not isinstance(stats, TrainedRun):
            return cls(**dict.fromkeys(cls.model_fields))  # every figure unknown
        fid, knn, dino = metrics.fid, metrics.knn, metrics.fd_dinov2
        return cls(
            fid=round(fid.mean, 4),
            fid_std=round(fid.std, 4),
            fid_inf=round(fid.infinity, 4),
            kid=round(metrics.kid.value, 6),
            fd_dinov2=None if dino is None else round(dino.mean, 4),
            precision=round(knn.precision, 4),
            recall=round(knn.recall, 4),
            density=round(knn.density, 4),
            coverage=round(knn.coverage, 4),
            ppl=round(metrics.ppl.value, 3),
            kimg=stats.kimg,
            train_hours=round(stats.train_seconds / 3600, 4),
        )


def read_metrics(path: str | Path) -> ModelMetrics | SkippedMetrics:
    data = read_json(path)
    shape = SkippedMetrics if isinstance(data, dict) and data.get("status") == "skipped" else ModelMetrics
    return shape.from_dict(data, path)


class LossPoint(Handoff):
    """One row of evals/<model>/losses.json: flat, so that `dvc plots` can draw each term."""

    writer: ClassVar[str] = "evaluate-<model>"
    kimg: float
    loss_D: float  # the adversarial terms under fixed names, so one plot definition serves every model
    loss_G: float


# ------------------------------------------------------------------------------------------------
# data/raw/SOURCE.json and data/faces/meta.json


class RawSource(Handoff):
    """Where `download` found the images and what it verified; preprocess reads the images from image_root
    in files.jsonl's order. Fields another source does not have are empty ("", {}, 0, False)."""

    writer: ClassVar[str] = "download"
    source: Literal["celeba", "url", "folder", "synthetic"]  # data.source
    image_root: str  # the folder that holds the images (files.jsonl's paths are relative to it)
    partition_file: str  # CelebA's list_eval_partition.txt, or "": it orders the images
    count: int  # images listed
    symlinked_folders_skipped: int  # symlinked folders not followed (a loop, or outside the source)
    url: str  # source=url: the archive's address (data.url without credentials, query or fragment)
    fetched_from: str  # source=url: where the bytes came from after redirects (a mirror), likewise cleaned
    broken_links: list[str]  # broken symlinks skipped while listing (targets missing), relative to image_root
    sha256: str  # source=url, or a folder given as an archive: the archive's sha256
    verified: bool  # the archive's checksum was checked against a given one (data.sha256, CelebA's md5s)
    md5: dict[str, str]  # source=celeba: the md5 of each of its four files, checked
    folder: str  # source=folder: data.folder as written
    archive: str  # source=folder given as an archive: its resolved path
    synthetic_seed: int  # source=synthetic: the drawing's seed
    synthetic_size: int  # source=synthetic: the drawn faces' size in pixels

    @classmethod
    def of(cls, source: str, image_root: str | Path, **fields: Any) -> RawSource:
        """A record with every field its source does not fill left empty."""
        empty = {
            "partition_file": "",
            "count": 0,
            "symlinked_folders_skipped": 0,
            "url": "",
            "fetched_from": "",
            "broken_links": [],
            "sha256": "",
            "verified": False,
            "md5": {},
            "folder": "",
            "archive": "",
            "synthetic_seed": 0,
            "synthetic_size": 0,
        }
        return cls(source=source, image_root=str(image_root), **{**empty, **fields})


class FaceCacheMeta(Handoff):
    """The face cache's description beside faces.npy: what the pixels are and where they came from."""

    writer: ClassVar[str] = "preprocess"
    source: str  # data.source of the images (synthetic, celeba, url, folder)
    synthetic: bool  # drawn faces, not photographs
    count: int  # faces in faces.npy
    resolution: int  # their size in pixels
    fingerprint: str  # sha256 of the pixels (facegan.data.cache.fingerprint_of): runs and statistics name it
    image_root: str  # where the source images were ("" for drawn faces)
    align: dict[str, Any]  # the data.align params the faces were cropped with ({} for drawn faces)
    mtcnn: dict[str, Any]  # the data.mtcnn params of the detection, device aside ({} for drawn faces)


# ------------------------------------------------------------------------------------------------
# data/reference/meta.json


class Span(Handoff):
    """The smallest and largest value a statistic took over the real-vs-real splits."""

    writer: ClassVar[str] = "reference_stats"
    low: float
    high: float

    def below(self, value: float) -> bool:
        return value < self.low


class KnnFloor(Handoff):
    """What two disjoint sets of n real faces score on the k-NN metrics and the feature spread, over
    `splits` random halvings of 2n faces: the range a generator that samples the data would land in at
    this n. A heuristic flag on a model's value is only shown when the value lies outside it."""

    writer: ClassVar[str] = "reference_stats"
    k: int
    splits: int
    precision: Span
    recall: Span
    density: Span
    coverage: Span
    spread_ratio: Span  # trace of one half's feature covariance over the other's


class Floor(Handoff):
    """The real-vs-real noise floor at n: FID and KID between two disjoint sets of n cached faces, and at
    the k-NN metrics' n their range over random halvings (None for floors no k-NN metric is read at)."""

    writer: ClassVar[str] = "reference_stats"
    n: int
    fid: float
    kid: float
    knn: KnnFloor | None = None


class FeatureChain(Handoff):
    """Every step between a face and its feature vector: statistics of one chain are never compared with
    images that went through another."""

    writer: ClassVar[str] = "reference_stats"
    crop: str  # how the cached faces were cut from the photographs (or drawn)
    resolution: int  # the cached faces' and the generators' size
    resize: str  # to the network's input
    extractor: str  # the network


class DinoReference(Handoff):
    """The reals' DINOv2 features (features_dinov2.npz beside features.npz) for FD-DINOv2."""

    writer: ClassVar[str] = "reference_stats"
    label_key: str  # facegan.metrics.labels: dinov2 | dinov2_stand_in
    network: str  # the timm architecture and input size (its chain's resize: PIL bicubic to that size)
    weights: str  # the checkpoint ("" for a stand-in)
    floors: dict[str, Floor]  # by n, as the Inception floors
    count: int


class ReferenceMeta(Handoff):
    writer: ClassVar[str] = "reference_stats"
    extractor: str  # the network used: inception | fid_helper | proxy (`auto` resolved)
    weights: str  # the file it came from ("" for the proxy)
    choice: str  # why evaluate.extractor=auto chose it ("" when it was asked for by name)
    label_key: str  # facegan.metrics.labels key (fid_helper_unverified until its check passed)
    agreement: dict | None  # fid-helper vs clean-fid feature check, when one was possible
    floors: dict[str, Floor]  # by the n of a metric (str(n)): what a perfect generator scores at that n
    count: int  # real faces the statistics come from
    cache_count: int
    cache_fingerprint: str  # evaluate refuses to compare a model with statistics of another cache
    source: str
    synthetic: bool
    resolution: int
    chain: FeatureChain  # crop, resolution, resize and network of the Inception features
    dinov2: DinoReference | None  # None: evaluate.dinov2 was off


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------
# tune/<model>/study.json: an Optuna study's outcome (python -m facegan.tune), read by the report


class TuneFile(Handoff):
    """Written by the tune command, not by a DVC stage."""

    writer: ClassVar[str] = "python -m facegan.tune <model>"

    @classmethod
    def rerun(cls) -> str:
        return cls.writer


class TunePoint(TuneFile):
    """A trial's FID at one of its snapshots: what pruning decided on."""

    kimg: float
    fid: float


class TuneTrial(TuneFile):
    number: int
    state: Literal["complete", "pruned", "fail"]
    params: dict[str, Any]  # the sampled values, by their key under models.<model>
    fid: float | None  # the score at the study's budget (complete trials)
    points: list[TunePoint]
    experiment: str  # the DVC experiment of a complete trial ("" otherwise)
    seconds: float
    error: str  # a failed trial's last error line


class TuneStudy(TuneFile):
    model: str
    label_key: str  # facegan.metrics.labels key of the FID's network
    kimg: float  # every trial's budget
    num_gen: int
    space: dict[str, list]  # tune.space.<model> as it was searched
    baseline: dict[str, Any]  # the model section's values of the searched keys (params.yaml, profile applied)
    best_number: int | None
    best_fid: float | None
    best_params: dict[str, Any]
    best_experiment: str
    trials: list[TuneTrial]
    plots: list[str]  # file names beside study.json
