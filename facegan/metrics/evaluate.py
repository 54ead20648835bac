"""Every metric of a trained generator, its FID along the training snapshots, and its pictures.

`evaluate_run` is what the `evaluate-<model>` stage calls: from the run folder written by
training, the reference statistics and the params views it returns an `Evaluation` (the metrics
file's content, the FID-vs-kimg curve, the loss curve for `dvc plots` and the report's pictures);
the stage writes it. Numbers: FID (mean/std over `evaluate.fid_seeds` generated sets), KID,
precision/recall (on the first set's features), PPL, each with its sample count and the label
key of the network that produced it (facegan.metrics.labels).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

import models
from facegan import checkpoint, handoff, settings
from facegan.data.cache import to_uint8
from facegan.device import resolve_device
from facegan.errors import UserError
from facegan.metrics import labels, visuals
from facegan.metrics.dinov2 import build_dinov2
from facegan.metrics.features import Extractor, build_extractor, extract, feature_chain
from facegan.metrics.fid import (
    Extrapolated,
    Spread,
    extrapolate_fid,
    fid_from_features,
    kid_from_features,
    sample_sizes,
    spread,
)
from facegan.metrics.ppl import PathLength, PplSampling, build_lpips, path_length
from facegan.metrics.precision_recall import KnnMetrics, knn_metrics
from facegan.metrics.reference import DINOV2_FILE, load_features, spread_ratio
from facegan.metrics.resize_pool import ResizePool, resize_pool

log = logging.getLogger(__name__)
PROGRESSIVE_GRID = re.compile(r"res(\d+)_.*\.png")


@dataclass
class Evaluation:
    metrics: handoff.ModelMetrics | handoff.SkippedMetrics
    curve: list[handoff.FidPoint] = field(default_factory=list)
    losses: list[handoff.LossPoint] = field(default_factory=list)
    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # file stem -> RGB uint8 image
    copied: dict[str, bytes] = field(default_factory=dict)  # file name -> a training grid's bytes, as they are
    stats: handoff.TrainedRun | handoff.SkippedRun | None = None  # the train_stats.json the numbers are of


@dataclass(frozen=True)
class EvalSeeds:
    """Every random draw of the evaluation, derived from params `seed` (disjoint from training's). The
    snapshots use the first FID set's latents, so the final snapshot's point reuses that set's features."""

    fid: list[int]  # one per generated set
    snapshots: int
    ppl: int
    pictures: int
    kid_subsets: int

    @classmethod
    def of(cls, seed: int, fid_seeds: int) -> EvalSeeds:
        return cls(
            fid=[seed + 1000 + i for i in range(fid_seeds)],
            snapshots=seed + 1000,
            ppl=seed + 3000,
            pictures=seed + 4000,
            kid_subsets=seed,
        )

    def recorded(self) -> dict[str, int | list[int]]:
        """The seeds of the generated images, as metrics.json records them."""
        return {"fid": self.fid, "snapshots": self.snapshots, "ppl": self.ppl, "pictures": self.pictures}


@dataclass(frozen=True)
class FeatureSets:
    """The metrics of the generated sets' features against the reference, each from one function below."""

    fid: Spread  # over evaluate.fid_seeds sets (fid_over_sets)
    first: np.ndarray  # the first set's features: KID, the k-NN metrics, FID-infinity, the final snapshot's point
    fd_dinov2: Spread | None  # over the same sets (fd_dinov2_over_sets; None: evaluate.dinov2 none)
    knn: KnnMetrics  # of the first set (knn_of)
    extrapolated: Extrapolated  # FID-infinity and KID at several n, from the first set (fid_infinity)
    kid: float  # of the first set (kid_of)
    spread_ratio: float  # trace of the generated covariance over the reference's (spread_of)


class Stopwatch:
    """Seconds per named part of the evaluation, for metrics.json's eval_seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part], self._start = round(now - self._start, 2), now


NOISE_SEED_STRIDE = 1 << 20  # batches a set may have before its noise seeds meet the next set's


def generated_batches(G, count: int, batch_size: int, seed: int, device: torch.device):
    """uint8 (B, H, W, 3) batches of `count` images from seeded latents. The per-pixel noise inputs of
    StyleGAN and StyleGAN2 are drawn under a random state seeded per batch too, so that a set is the same
    images on every run (from the process's random state, the same weights would give another FID on
    each run)."""
    gen = torch.Generator().manual_seed(seed)
    devices = [device] if device.type == "cuda" else []
    for number, start in enumerate(range(0, count, batch_size)):
        z = torch.randn(min(batch_size, count - start), G.z_dim, generator=gen)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * NOISE_SEED_STRIDE + number)
            yield to_uint8(G(z.to(device)))


def train_hours_at(kimg: float, history: list[handoff.HistoryRow]) -> float | None:
    """Training time when a snapshot was taken, from the history's (kimg, train_seconds) points."""
    if not history:
        return None
    return float(np.interp(kimg, [h.kimg for h in history], [h.train_seconds for h in history])) / 3600


def ppl_space(eval_params: settings.EvaluateSettings, style_based: bool, model: str) -> str:
    if eval_params.ppl_space == "auto":
        return "w" if style_based else "z"
    if eval_params.ppl_space == "w" and not style_based:
        raise UserError(f"evaluate.ppl_space=w needs a style-based generator and {model} is not: use auto or z")
    return eval_params.ppl_space


def loss_curve(history: list[handoff.HistoryRow]) -> list[handoff.LossPoint]:
    """The adversarial terms of every model under fixed names, for the shared `dvc plots` definition."""
    from facegan.training.terms import D_ADVERSARIAL, G_ADVERSARIAL

    return [
        handoff.LossPoint(kimg=h.kimg, loss_D=h.losses[D_ADVERSARIAL], loss_G=h.losses[G_ADVERSARIAL]) for h in history
    ]


@dataclass
class DinoSide:
    """FD-DINOv2's network and the reals' features (evaluate.dinov2 on)."""

    extractor: Extractor
    reference: np.ndarray
    meta: handoff.DinoReference


@dataclass
class Run:
    """What every part of the evaluation reads: the trained run, the reference and the feature path."""

    view: handoff.ModelView
    eval_params: settings.EvaluateSettings  # the evaluate params
    run_dir: Path
    stats: handoff.TrainedRun
    snapshots: list[Snapshot]
    meta: handoff.ReferenceMeta
    reference: np.ndarray
    extractor: Extractor
    G: torch.nn.Module
    seeds: EvalSeeds
    device: torch.device
    pool: ResizePool | None = None
    dino: DinoSide | None = None

    @property
    def spec(self) -> models.ModelSpec:
        return models.get_spec(self.view.model)

    def features(self, G, count: int, seed: int) -> np.ndarray:
        return extract(
            generated_batches(G, count, self.eval_params.batch_size, seed, self.device), self.extractor, self.pool
        )

    def dino_features(self, count: int, seed: int) -> np.ndarray:
        """The DINOv2 features of the same images `features(G, count, seed)` saw (generated again: same seeds)."""
        batches = generated_batches(self.G, count, self.eval_params.batch_size, seed, self.device)
        return extract(batches, self.dino.extractor)


def check_reference(
    model: str, view: handoff.ModelView, stats: handoff.TrainedRun, meta: handoff.ReferenceMeta, extractor: Extractor
) -> None:
    """Refuse reference statistics of another network, another face cache or another resolution."""
    if meta.extractor != extractor.kind:
        raise UserError(
            f"reference features use {meta.extractor} but evaluate.extractor={extractor.kind}: "
            "run `dvc repro reference_stats`"
        )
    if meta.cache_fingerprint != stats.cache_fingerprint:
        raise UserError(
            f"{model} trained on face cache {stats.cache_fingerprint} but the reference statistics are of cache "
            f"{meta.cache_fingerprint}: run `dvc repro` (it re-runs whichever of them is out of date)"
        )
    if meta.resolution != view.resolution:
        raise UserError(
            f"reference statistics were computed at {meta.resolution}px but data.resolution="
            f"{view.resolution}: run `dvc repro reference_stats`"
        )
    # the crop is the cache's, which the fingerprint check above has matched
    expected = feature_chain(meta.chain.crop, view.resolution, extractor)
    if meta.chain != expected:
        differs = [k for k in expected.model_fields if getattr(meta.chain, k) != getattr(expected, k)]
        key = differs[0]
        raise UserError(
            f"reference statistics come from another feature chain ({key}: {getattr(meta.chain, key)!r}, this "
            f"evaluation: {getattr(expected, key)!r}): run `dvc repro reference_stats`"
        )


@dataclass
class Snapshot:
    """A training snapshot, checked and held open at the start: every later read is of the same file, even
    if runs/<model> is removed or replaced meanwhile (DVC clears a stage's outputs before running it)."""

    path: Path
    handle: BinaryIO

    def load(self) -> dict:
        self.handle.seek(0)
        return torch.load(self.handle, map_location="cpu", weights_only=True)


def open_snapshots(run_dir: Path, restore: str, files: contextlib.ExitStack) -> list[Snapshot]:
    """Every snapshot of the run, each opened and read once (a bad one stops here, before any metric)."""
    snapshots = []
    for path in snapshot_files(run_dir):
        checkpoint.load(path, fix=restore)
        handle = files.enter_context(open(path, "rb"))  # noqa: SIM115 - held open for the whole evaluation
        snapshots.append(Snapshot(path, handle))
    return snapshots


def evaluate_run(
    view: handoff.ModelView, ev_view: handoff.EvaluateView, run_dir: Path, reference_dir: Path
) -> Evaluation:
    """Every number of one trained run. Each input is read once, at the start, and the result carries the
    train stats it was computed from: a file that changes meanwhile cannot mix two runs in one evaluation."""
    stats = handoff.read_train_stats(run_dir / "train_stats.json")
    if isinstance(stats, handoff.SkippedRun):
        skipped = handoff.SkippedMetrics(status="skipped", model=view.model, reason=stats.reason)
        return Evaluation(skipped, stats=stats)
    with contextlib.ExitStack() as files:
        return evaluate_trained(view, ev_view, run_dir, reference_dir, stats, files)


def evaluate_trained(
    view: handoff.ModelView,
    ev_view: handoff.EvaluateView,
    run_dir: Path,
    reference_dir: Path,
    stats: handoff.TrainedRun,
    files: contextlib.ExitStack,
) -> Evaluation:
    model, eval_params = view.model, ev_view.evaluate
    device = resolve_device(eval_params.device)
    meta = handoff.ReferenceMeta.read(reference_dir / "meta.json")
    extractor = build_extractor(eval_params.extractor, eval_params, device)
    check_reference(model, view, stats, meta, extractor)
    dino = dino_side(eval_params, meta, reference_dir, device)
    # every input is read and checked before the first metric: a bad file never costs the minutes before it
    restore = f"restore it with `dvc checkout --force train-{model}` or train again with `dvc repro -f train-{model}`"
    trained = checkpoint.load(run_dir / "G_ema.pt", fix=restore)
    snapshots = open_snapshots(run_dir, restore, files)
    grids = training_grids(run_dir)
    G = models.from_snapshot(model, view.params.arch, view.resolution, trained).to(device)
    with resize_pool(eval_params, device) as pool:
        run = Run(
            view,
            eval_params,
            run_dir,
            stats,
            snapshots,
            meta,
            load_features(reference_dir),
            extractor,
            G,
            EvalSeeds.of(ev_view.seed, eval_params.fid_seeds),
            device,
            pool,
            dino,
        )
        clock = Stopwatch()
        sets = feature_metrics(run)
        clock.lap("feature_metrics")
        ppl = perceptual_path_length(run)
        clock.lap("ppl")
        curve = fid_curve(run, sets.first)
        clock.lap("snapshots")
        pictures = pictures_of(run)
        clock.lap("pictures")
    return Evaluation(
        metrics=metrics_of(run, sets, ppl, curve, clock.seconds),
        curve=curve,
        losses=loss_curve(stats.history),
        pictures=pictures,
        copied=grids,
        stats=stats,
    )


def dino_side(
    eval_params: settings.EvaluateSettings, meta: handoff.ReferenceMeta, reference_dir: Path, device: torch.device
) -> DinoSide | None:
    """FD-DINOv2's network and the reals' features, refused when the reference has none or another network's."""
    extractor = build_dinov2(eval_params, device)
    if extractor is None:
        return None
    if meta.dinov2 is None or (meta.dinov2.label_key, meta.dinov2.network) != (extractor.kind, extractor.note):
        had = "none" if meta.dinov2 is None else f"{meta.dinov2.label_key} {meta.dinov2.network}"
        raise UserError(
            f"the reference statistics hold DINOv2 features of {had}, evaluate.dinov2 asks for {extractor.kind} "
            f"{extractor.note}: run `dvc repro reference_stats`"
        )
    return DinoSide(extractor, load_features(reference_dir, DINOV2_FILE), meta.dinov2)


def feature_metrics(run: Run) -> FeatureSets:
    """Every metric of the generated sets' features: FID (and FD-DINOv2) over evaluate.fid_seeds sets; the
    k-NN metrics, FID-infinity, KID and the feature spread on the first set."""
    fid, first = fid_over_sets(run)
    sets = FeatureSets(
        fid=fid,
        first=first,
        fd_dinov2=fd_dinov2_over_sets(run),
        knn=knn_of(run, first),
        extrapolated=fid_infinity(run, first),
        kid=kid_of(run, first),
        spread_ratio=spread_of(run, first),
    )
    log.info(
        "%s: %s %.3f (std %.3f over %d sets of %d; infinity %.3f), precision %.3f, recall %.3f, density %.3f, "
        "coverage %.3f",
        run.view.model,
        run.extractor.kind,
        fid.mean,
        fid.std,
        len(fid.values),
        len(first),
        sets.extrapolated.value,
        sets.knn.precision,
        sets.knn.recall,
        sets.knn.density,
        sets.knn.coverage,
    )
    return sets


def fid_over_sets(run: Run) -> tuple[Spread, np.ndarray]:
    """FID of each of evaluate.fid_seeds generated sets, and the first set's features (the other metrics')."""
    fids, first = [], None
    for seed in run.seeds.fid:
        feats = run.features(run.G, run.eval_params.num_gen, seed)
        fids.append(fid_from_features(feats, run.reference))
        first = feats if first is None else first
    return spread(fids), first


def fd_dinov2_over_sets(run: Run) -> Spread | None:
    """FD-DINOv2 of the same sets (their images generated again from the same seeds); None when off."""
    if run.dino is None:
        return None
    fds = [
        fid_from_features(run.dino_features(run.eval_params.num_gen, seed), run.dino.reference)
        for seed in run.seeds.fid
    ]
    return spread(fds)


def knn_of(run: Run, first: np.ndarray) -> KnnMetrics:
    return knn_metrics(run.reference, first, run.eval_params.pr_k, run.device)


def fid_infinity(run: Run, first: np.ndarray) -> Extrapolated:
    """FID at evaluate.fid_inf_points subsets of the first set and its line in 1/n (KID at three of them)."""
    sizes = sample_sizes(len(first), run.eval_params.fid_inf_points, run.eval_params.fid_inf_smallest)
    return extrapolate_fid(first, run.reference, sizes, run.seeds.kid_subsets)


def kid_of(run: Run, first: np.ndarray) -> float:
    return kid_from_features(first, run.reference, run.seeds.kid_subsets)


def spread_of(run: Run, first: np.ndarray) -> float:
    return spread_ratio(first, run.reference)


def perceptual_path_length(run: Run) -> PathLength:
    eval_params = run.eval_params
    space = ppl_space(eval_params, run.spec.style_based, run.view.model)
    lpips_net = build_lpips(eval_params.lpips, eval_params.lpips_weights, run.device)
    pairs = PplSampling(
        space, eval_params.ppl_sampling, eval_params.ppl_samples, eval_params.ppl_epsilon, eval_params.ppl_crop
    )
    ppl = path_length(run.G, lpips_net, pairs, eval_params.batch_size, run.seeds.ppl, run.device)
    log.info(
        "%s: PPL in %s (%s, %s LPIPS) %.2f over %d pairs",
        run.view.model,
        space.upper(),
        eval_params.ppl_sampling,
        eval_params.lpips,
        ppl.ppl,
        ppl.num,
    )
    return ppl


def snapshot_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "snapshots").glob("*.pt"))


def fid_curve(run: Run, first: np.ndarray) -> list[handoff.FidPoint]:
    """FID of every training snapshot, the untrained generator (kimg 0) first."""
    eval_params, curve = run.eval_params, []
    for snap in run.snapshots:
        weights = snap.load()
        kimg = float(weights["kimg"])
        if kimg == run.stats.kimg and eval_params.snapshot_num_gen == eval_params.num_gen:
            feats = first  # the final snapshot is G_ema itself, with the first set's latents
        else:
            G = models.from_snapshot(run.view.model, run.view.params.arch, run.view.resolution, weights)
            feats = run.features(G.to(run.device), eval_params.snapshot_num_gen, run.seeds.snapshots)
        level = int(weights["level"])  # a growing model's snapshot shows its level, upsampled to full size
        curve.append(
            handoff.FidPoint(
                kimg=kimg,
                train_hours=train_hours_at(kimg, run.stats.history),
                fid=fid_from_features(feats, run.reference),
                num_gen=int(len(feats)),
                label_key=run.meta.label_key,
                resolution=4 * 2**level,
            )
        )
        log.info(
            "%s at %.2f kimg (%dpx): %s %.4g", run.view.model, kimg, 4 * 2**level, run.extractor.kind, curve[-1].fid
        )
    return curve


def pictures_of(run: Run) -> dict[str, np.ndarray]:
    """The report's pictures of G_ema."""
    eval_params, G, seed, device = run.eval_params, run.G, run.seeds.pictures, run.device
    pictures = {
        "samples": visuals.sample_grid(G, eval_params.grid_size, seed, device),
        "interpolation": visuals.interpolation_strips(
            G, run.spec.style_based, eval_params.interpolation_steps, seed, device
        ),
    }
    if run.spec.style_based:
        pictures["truncation"] = visuals.truncation_sweep(
            G, eval_params.truncation_psis, eval_params.truncation_rows, seed, device
        )
    return pictures


def training_grids(run_dir: Path) -> dict[str, bytes]:
    """The last training grid of each resolution (growing models), read at the start with the other inputs."""
    last_per_res = {}
    for grid in sorted((run_dir / "samples").glob("res*_*.png")):
        match = PROGRESSIVE_GRID.fullmatch(grid.name)
        if match:
            last_per_res[int(match.group(1))] = grid
    return {f"res{res}.png": grid.read_bytes() for res, grid in sorted(last_per_res.items())}


def dino_result(run: Run, fd: Spread | None) -> handoff.DinoResult | None:
    """FD-DINOv2's spread over the sets, with its label and floor (None when off)."""
    if run.dino is None or fd is None:
        return None
    return handoff.DinoResult(
        **asdict(fd), label_key=run.dino.meta.label_key, floor=run.dino.meta.floors[str(run.eval_params.num_gen)]
    )


def metrics_of(
    run: Run, sets: FeatureSets, ppl: PathLength, curve: list[handoff.FidPoint], seconds: dict[str, float]
) -> handoff.ModelMetrics:
    eval_params, extrapolated = run.eval_params, sets.extrapolated
    start = next((p for p in curve if p.kimg == 0), None)
    return handoff.ModelMetrics(
        status="trained",
        model=run.view.model,
        label_key=run.meta.label_key,
        num_gen=int(len(sets.first)),
        num_ref=int(len(run.reference)),
        floor=run.meta.floors[str(eval_params.num_gen)],
        fid=handoff.FidResult(
            **asdict(sets.fid),
            sets=len(sets.fid.values),
            start=None if start is None else start.fid,
            start_n=None if start is None else start.num_gen,
            infinity=extrapolated.value,
            slope=extrapolated.slope,
            by_n=extrapolated.fid_by_n,
        ),
        kid=handoff.KidResult(value=sets.kid, by_n=extrapolated.kid_by_n),
        fd_dinov2=dino_result(run, sets.fd_dinov2),
        knn=handoff.KnnResult.model_validate(sets.knn, from_attributes=True),
        feature_spread_ratio=sets.spread_ratio,
        ppl=handoff.PplResult(
            value=ppl.ppl,
            num=ppl.num,
            space=ppl.space,
            sampling=ppl.sampling,
            epsilon=ppl.epsilon,
            crop=eval_params.ppl_crop,
            label_key=labels.lpips_label_key(eval_params.lpips),
        ),
        eval_seconds=seconds,
        seeds=run.seeds.recorded(),
    )
