"""Render reports/comparison.md from the metrics, evals and training-stats files alone (no GPU needed).

Every number in the results tables comes from one field of metrics/<model>.json or
runs/<model>/train_stats.json (read through their declared shapes, facegan.handoff) via the
formatting in `result_cells` / `count_cells` (tests/test_report.py checks each one against the
files). Numbers from stand-in networks carry their label in every table cell and plot; labels
come from facegan.metrics.labels, keyed by the label key each metrics file records.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facegan import handoff, paths  # noqa: E402
from facegan.io import atomic_path, write_text  # noqa: E402
from facegan.metrics.labels import label  # noqa: E402

RESULT_COLUMNS = (
    "model",
    "status",
    "resolution",
    "params G / D",
    "kimg",
    "train time",
    "img/s",
    "peak memory",
    "FID",
    "KID ×10³",
    "PPL",
    "precision",
    "recall",
    "stability notes",
)
COUNT_COLUMNS = (
    "model",
    "generated (FID/KID)",
    "generated sets",
    "reference",
    "P&R per set",
    "PPL pairs",
    "FID-vs-kimg points",
    "images per point",
)
# Stability heuristics (stated under the table): thresholds on what the files hold
D_WINS_LOSS = 0.1  # non-saturating / hinge D loss below this at the end of training...
D_WINS_ROWS = 3  # ...on each of this many last logged rows
FID_WORSENED = 1.25  # final snapshot FID above this multiple of the best snapshot FID
LOW_RECALL = 0.1
LOW_SPREAD = 0.25  # generated features' total variance / the real features'
PICTURES = (
    ("samples", "samples"),
    ("truncation", "truncation sweep (ψ per column)"),
    ("interpolation", "interpolation: slerp in Z (top), linear in W (bottom, style-based only)"),
)


@dataclass
class Row:
    """What the files say about one model; `stats`/`metrics` are None when their stage has not run."""

    model: str
    stats: handoff.TrainedRun | handoff.SkippedRun | None
    metrics: handoff.ModelMetrics | handoff.SkippedMetrics | None
    curve: list[handoff.FidPoint] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return isinstance(self.stats, handoff.TrainedRun) and isinstance(self.metrics, handoff.ModelMetrics)

    @property
    def status(self) -> str:
        """Why a row has no results: the skip reason, or which stage has not run."""
        if self.stats is None:
            return "not run: train stage not run"
        if isinstance(self.stats, handoff.SkippedRun):
            return f"skipped: {self.stats.reason}"
        if self.metrics is None:
            return "not run: evaluate stage not run"
        if isinstance(self.metrics, handoff.SkippedMetrics):
            return f"skipped: {self.metrics.reason}"
        return "trained"


def collect(models: list[str]) -> list[Row]:
    """One record per model: its train stats, metrics and FID curve, each read through its declared shape."""
    rows = []
    for name in models:
        stats_file, metrics_file = paths.run_dir(name) / "train_stats.json", paths.full_metrics_file(name)
        curve_file = paths.eval_dir(name) / "fid_vs_kimg.json"
        rows.append(
            Row(
                model=name,
                stats=handoff.read_train_stats(stats_file) if stats_file.exists() else None,
                metrics=handoff.read_metrics(metrics_file) if metrics_file.exists() else None,
                curve=handoff.read_list(handoff.FidPoint, curve_file) if curve_file.exists() else [],
            )
        )
    return rows


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric(value: float) -> str:
    """Two decimals, four below 1 (proxy metrics are small numbers)."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def readable(value: float) -> str:
    """A number for a reader: at most three significant digits below 100 and no exponent ('0.00025', '1.6',
    '48', '1234'), where `fmt`'s fixed decimals would print 0.00 or nine digits."""
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    if "e" in text:
        text = f"{value:.{2 - math.floor(math.log10(abs(value)))}f}"
    return text


def half_life(kimg: float) -> str:
    """An EMA half-life in kimg, or in images below 1 kimg (R3GAN's ramps up from 0 during a run)."""
    return f"{readable(kimg)} kimg" if kimg >= 1 else f"{readable(kimg * 1000)} images"


def millions(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M"


def device_kind(stats: handoff.TrainedRun) -> str:
    return "GPU" if stats.device.startswith("cuda") else "CPU"


def hours_label(stats: handoff.TrainedRun) -> str:
    return f"{stats.train_seconds / 3600:.3f} {device_kind(stats)}-h"


def memory_label(stats: handoff.TrainedRun) -> str:
    if stats.peak_memory_bytes is None:
        return "n/a (CPU)" if device_kind(stats) == "CPU" else "–"
    return f"{stats.peak_memory_bytes / 2**30:.2f} GiB"


def stability_notes(row: Row, loss_type: str, floors: dict[str, handoff.Floor] | None = None) -> str:
    """Divergence / collapse signs in the history and metrics (the rules are stated under the table). A
    heuristic on a sample statistic is only claimed where the statistic lies outside what real faces score
    at that n (the floors); otherwise the note says the sample is too small to tell."""
    notes = [note for check in (loss_notes, fid_trend_notes, collapse_notes) for note in check(row, loss_type, floors)]
    return "; ".join(notes) or "none detected"


def loss_notes(row: Row, loss_type: str, floors) -> list[str]:
    """Non-finite losses, and D's loss near zero on each of the last D_WINS_ROWS logged rows (one row is one
    batch: a single low value is noise)."""
    from facegan.training.terms import D_ADVERSARIAL

    hist = row.stats.history if isinstance(row.stats, handoff.TrainedRun) else []
    notes = []
    if any(not all(handoff.is_finite_number(v) for v in h.losses.values()) for h in hist):
        notes.append("non-finite loss (diverged)")
    if not hist or loss_type not in ("ns", "hinge") or hist[-1].losses[D_ADVERSARIAL] >= D_WINS_LOSS:
        return notes
    last = [h.losses[D_ADVERSARIAL] for h in hist[-D_WINS_ROWS:]]
    if len(last) == D_WINS_ROWS and all(v < D_WINS_LOSS for v in last):
        notes.append("D overpowers G (D loss near zero)")
    else:
        notes.append("D loss near zero only at the last log rows: too few rows to tell")
    return notes


def fid_trend_notes(row: Row, loss_type: str, floors) -> list[str]:
    """The final snapshot's FID well above the best one, by more than the real-vs-real floor at the
    snapshots' n (a rise smaller than the floor is what two sets of real faces differ by)."""
    # a growing model's earlier levels are not candidates for "best": only the final resolution's
    final_res = max((p.resolution for p in row.curve), default=0)
    points = [p for p in row.curve if p.resolution == final_res]
    fids = [p.fid for p in points]
    if len(fids) < 3:
        return []
    best = min(fids)
    if not (fids[-1] > FID_WORSENED * best and fids.index(best) < len(fids) - 1):
        return []
    floor = (floors or {}).get(str(points[-1].num_gen))
    if floor is not None and fids[-1] - best <= floor.fid:
        return [
            f"FID rose after its best snapshot by less than the real-vs-real floor at n={floor.n}: too small to tell"
        ]
    return ["FID worsened after its best snapshot"]


def collapse_notes(row: Row, loss_type: str, floors) -> list[str]:
    """Low recall or low feature spread, claimed as a mode-collapse sign only below the real-vs-real range
    at the k-NN metrics' n, and recall only while precision is inside it (both low: the samples are not yet
    like the data at all, which is no sign of collapse)."""
    m = row.metrics
    if not isinstance(m, handoff.ModelMetrics):
        return []
    knn, real = m.knn, m.floor.knn
    notes = []
    if knn.recall < LOW_RECALL:
        if real is None:
            notes.append("low recall: no real-vs-real range to judge it (re-run `dvc repro reference_stats`)")
        elif not real.recall.below(knn.recall):
            notes.append(f"low recall, inside the real-vs-real range at n={m.floor.n}: too small to tell")
        elif real.precision.below(knn.precision):
            notes.append("precision and recall below the real-vs-real range (samples unlike the data, not collapse)")
        else:
            notes.append("low recall (possible mode collapse)")
    if m.feature_spread_ratio < LOW_SPREAD:
        if real is None:
            notes.append("low feature spread: no real-vs-real range to judge it (re-run `dvc repro reference_stats`)")
        elif not real.spread_ratio.below(m.feature_spread_ratio):
            notes.append(f"low feature spread, inside the real-vs-real range at n={m.floor.n}: too small to tell")
        else:
            notes.append("low feature spread (possible mode collapse)")
    return notes


def fid_cell(m: handoff.ModelMetrics) -> str:
    """FID with its spread over the generated sets and its sample count: '41.50 ± 1.25 (n=256×2)'."""
    fid = m.fid
    spread = f" ± {metric(fid.std)}" if fid.sets > 1 else ""
    return f"{metric(fid.mean)}{spread} (n={m.num_gen}×{fid.sets})"


def improvement(m: handoff.ModelMetrics) -> str:
    """The final FID against the untrained generator's (kimg 0), at the snapshots' sample count."""
    fid = m.fid
    if fid.start is None:
        return "– (no kimg-0 snapshot)"
    if fid.mean >= fid.start:  # no progress: never call a rise "lower"
        change = f"{fid.mean / max(fid.start, 1e-12):.2f}× higher, no improvement"
    else:
        change = f"{fid.start / max(fid.mean, 1e-12):.2f}× lower"
    return f"{metric(fid.start)} → {metric(fid.mean)}: {change} (start n={fid.start_n})"


RANKING_COLUMNS = (
    "rank",
    "model",
    "FID (n × sets)",
    "real-vs-real floor",
    "FID∞ (n range)",
    "KID ×10³ (floor)",
    "FD-DINOv2 (n × sets; floor)",
    "precision / recall",
    "density / coverage (n, k)",
    "FID at kimg 0 → final",
)
# Every metric of the ranking: (name, value of a row's metrics or None, whether higher is better)
RANKED_METRICS = (
    ("FID", lambda m: m.fid.mean, False),
    ("FID∞", lambda m: m.fid.infinity, False),
    ("KID", lambda m: m.kid.value, False),
    ("FD-DINOv2", lambda m: None if m.fd_dinov2 is None else m.fd_dinov2.mean, False),
    ("precision", lambda m: m.knn.precision, True),
    ("recall", lambda m: m.knn.recall, True),
    ("density", lambda m: m.knn.density, True),
    ("coverage", lambda m: m.knn.coverage, True),
)


def fid_inf_cell(m: handoff.ModelMetrics) -> str:
    sizes = [int(n) for n in m.fid.by_n]
    return f"{metric(m.fid.infinity)} (n={min(sizes)}..{max(sizes)}, {len(sizes)} points)"


def dino_cell(m: handoff.ModelMetrics) -> str:
    dino = m.fd_dinov2
    if dino is None:
        return "– (evaluate.dinov2 none)"
    spread = f" ± {metric(dino.std)}" if m.fid.sets > 1 else ""
    return (
        f"{metric(dino.mean)}{spread}{label(dino.label_key).suffix} (n={m.num_gen}×{m.fid.sets}; "
        f"floor {metric(dino.floor.fid)})"
    )


def ranking_section(rows: list[Row]) -> str:
    """The evaluated models by FID, best first, each metric with its n, spread and floor, and whether the
    metrics agree on the order."""
    ranked = sorted((r for r in rows if r.trained), key=lambda r: r.metrics.fid.mean)
    cells = []
    for rank, row in enumerate(ranked, 1):
        m, suffix = row.metrics, label(row.metrics.label_key).suffix
        cells.append(
            [
                str(rank),
                row.model,
                fid_cell(m) + suffix,
                f"{metric(m.floor.fid)} (n={m.floor.n})",
                fid_inf_cell(m),
                f"{metric(m.kid.value * 1e3)} ({metric(m.floor.kid * 1e3)})",
                dino_cell(m),
                f"{m.knn.precision:.3f} / {m.knn.recall:.3f}",
                f"{m.knn.density:.3f} / {m.knn.coverage:.3f} (n={m.knn.num}, k={m.knn.k})",
                improvement(m),
            ]
        )
    missing = [r.model for r in rows if not r.trained]
    text = markdown_table(RANKING_COLUMNS, cells)
    text += (
        "\nThe floor is the FID (and KID) between two disjoint sets of real faces of the same size: what a "
        "generator that samples the data perfectly would score at that n. Differences between models that are "
        "small beside it mean little. FID∞ is the intercept of FID(n)'s line in 1/n over the n shown (Chong & "
        "Forsyth 2020): FID without its finite-sample bias. Density and coverage (Naeem et al. 2020) use the real "
        "k-NN balls of precision: density near 1 and coverage near 1 for a generator that samples like the data.\n"
    )
    text += agreement_text([r.metrics for r in ranked], [r.model for r in ranked])
    if missing:
        text += f"\nNot ranked: {', '.join(missing)} (see Results).\n"
    return text


def metric_scores(metrics: list[handoff.ModelMetrics], models: list[str]) -> dict[str, dict[str, float]]:
    """Per ranked metric that every model has: model -> score, higher better (distances negated)."""
    scores = {}
    for name, value, higher_is_better in RANKED_METRICS:
        values = [value(m) for m in metrics]
        if any(v is None for v in values):
            continue
        scores[name] = {model: v if higher_is_better else -v for model, v in zip(models, values)}
    return scores


def spoken_order(score: dict[str, float]) -> str:
    """Best first, '>' between different scores and '=' between equal ones (ties are no order)."""
    ranked = sorted(score, key=lambda model: -score[model])
    text = ranked[0]
    for before, model in zip(ranked, ranked[1:]):
        text += (" = " if score[model] == score[before] else " > ") + model
    return text


def kendall_tau(first: dict[str, float], second: dict[str, float]) -> float | None:
    """Kendall's tau-b of two scorings of the same models: +1 the same order, -1 reversed; ties in either
    scoring are no order. None when one scoring ties every pair the other orders (no order to compare)."""
    models = list(first)
    concordant = discordant = tied_first = tied_second = 0
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            product = sign(first[a] - first[b]) * sign(second[a] - second[b])
            concordant += product > 0
            discordant += product < 0
            tied_first += first[a] == first[b] and second[a] != second[b]
            tied_second += second[a] == second[b] and first[a] != first[b]
    denominator = ((concordant + discordant + tied_first) * (concordant + discordant + tied_second)) ** 0.5
    return (concordant - discordant) / denominator if denominator else None


def tau_text(tau: float | None) -> str:
    return "Kendall τ with FID undefined: ties leave no order" if tau is None else f"Kendall τ with FID {tau:+.2f}"


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def agreement_text(metrics: list[handoff.ModelMetrics], models: list[str]) -> str:
    """What the metrics agree on: each metric's order, and its rank correlation with FID's."""
    if len(models) < 2:
        return ""
    scores = metric_scores(metrics, models)
    lines = [
        f"- {name}: {spoken_order(score)} ({tau_text(kendall_tau(scores['FID'], score))})"
        for name, score in scores.items()
    ]
    distances = [n for n in ("FID", "FID∞", "KID", "FD-DINOv2") if n in scores]
    same = all(kendall_tau(scores["FID"], scores[n]) == 1.0 for n in distances)
    verdict = (
        f"{', '.join(distances)} rank the models in the same order."
        if same
        else f"{', '.join(distances)} do not all rank the models alike: read the differences against the floors."
    )
    return "\n**What the metrics agree on** (best first). " + verdict + "\n\n" + "\n".join(lines) + "\n"


EQUAL_TIME_COLUMNS = ("model", "FID at the common time", "from snapshots (kimg)", "their hours", "device")
SAME_TIME = 0.02  # a snapshot within this fraction of the common time is read as taken at it


def fid_at_time(curve: list[handoff.FidPoint], hours: float) -> tuple[str, str, str]:
    """(FID, the snapshots it comes from, their hours) at `hours`, from measured points only: a snapshot
    taken at that time, or the straight line between the two snapshots around it. The line is not drawn
    from the untrained start (kimg 0: FID falls steeply and far from linearly in the first steps) nor past
    the last snapshot; then the cell says there are too few snapshots."""
    near = [p for p in curve if abs(p.train_hours - hours) <= SAME_TIME * hours]
    if near:
        point = min(near, key=lambda p: abs(p.train_hours - hours))
        return metric(point.fid) + label(point.label_key).suffix, readable(point.kimg), f"{point.train_hours:.3f}"
    before = [p for p in curve if p.train_hours < hours]
    after = [p for p in curve if p.train_hours > hours]
    if not before or not after or before[-1].kimg <= 0:
        kept = ", ".join(readable(p.kimg) for p in curve)
        return f"– (too few snapshots to interpolate: kimg {kept})", "–", "–"
    p0, p1 = before[-1], after[0]
    share = (hours - p0.train_hours) / (p1.train_hours - p0.train_hours)
    fid = p0.fid + share * (p1.fid - p0.fid)
    return (
        f"{metric(fid)}{label(p1.label_key).suffix}, interpolated",
        f"{readable(p0.kimg)} – {readable(p1.kimg)}",
        f"{p0.train_hours:.3f} – {p1.train_hours:.3f}",
    )


def equal_time_section(rows: list[Row]) -> str:
    """Every model's FID at the same training time: the shortest run's total time, read off each model's
    FID-vs-time snapshots (`fid_at_time`)."""
    runs = [r for r in rows if r.trained and r.curve and all(p.train_hours is not None for p in r.curve)]
    if len(runs) < 2:
        return ""
    common = min(r.stats.train_seconds / 3600 for r in runs)
    cells = [
        [row.model, *fid_at_time(row.curve, common), device_kind(row.stats)]
        for row in sorted(runs, key=lambda r: r.model)
    ]
    sparse = [cell[0] for cell in cells if cell[1].startswith("– (too few snapshots")]
    hint = (
        f" {', '.join(sparse)}: too few snapshots around that time; a lower `train.snapshot_kimg` gives the "
        "curves more points."
        if sparse
        else ""
    )
    return (
        f"\n## At equal training time ({common:.3f} h, the shortest run)\n\n"
        + markdown_table(EQUAL_TIME_COLUMNS, cells)
        + "\nEach FID is a measured snapshot taken at that time, or the straight line between the two snapshots "
        "around it (never from the untrained kimg-0 start, never past the last snapshot). Times are on each "
        f"model's own device; with `train.budget_minutes` every model gets the same time.{hint}\n"
    )


TUNE_COLUMNS = ("model", "trials (complete / pruned / failed)", "budget (kimg)", "best", "params of the best trial")


def tune_section(models: list[str], figures: Path, tune_dir: Path = paths.TUNE_DIR) -> str:
    """The Optuna studies of `python -m facegan.tune` found under tune/<model>/study.json."""
    studies = [
        handoff.TuneStudy.read(tune_dir / m / "study.json") for m in models if (tune_dir / m / "study.json").exists()
    ]
    if not studies:
        return ""
    cells, pictures = [], []
    for study in studies:
        states = [t.state for t in study.trials]
        counts = " / ".join(str(states.count(s)) for s in ("complete", "pruned", "fail"))
        best = "–" if study.best_fid is None else f"{metric(study.best_fid)}{label(study.label_key).suffix}"
        changed = ", ".join(
            f"{key} {study.baseline.get(key):.4g} → {value:.4g}" for key, value in study.best_params.items()
        )
        cells.append([study.model, counts, fmt(study.kimg), best, changed or "–"])
        for plot in study.plots:
            shutil.copy(tune_dir / study.model / plot, figures / f"tune_{study.model}_{plot}")
            pictures.append(f"![{study.model} {plot}](figures/tune_{study.model}_{plot})")
    return (
        "\n## Hyper-parameter search (`python -m facegan.tune`)\n\n"
        + markdown_table(TUNE_COLUMNS, cells)
        + f"\nEach trial trains to the budget as a DVC experiment and is scored by its final FID on "
        f"{', '.join(str(s.num_gen) for s in studies)} images; trials worse than the median of earlier ones at a "
        "snapshot are pruned there. Params are `params.yaml` value → best trial's (tune/<model>/best.yaml).\n\n"
        + "\n\n".join(pictures)
        + "\n"
    )


def samples_overview(rows: list[Row], out: Path, grid_size: int, per_model: int = 8, cell: int = 64) -> bool:
    """One picture: a row of `per_model` samples per evaluated model (from its grid of grid_size x grid_size
    samples, evaluate.grid_size), its name on the left, every sample shown at `cell` px."""
    from PIL import Image, ImageDraw

    grids = [(r.model, paths.eval_dir(r.model) / "samples.png") for r in rows if r.trained]
    grids = [(name, Image.open(path).convert("RGB")) for name, path in grids if path.exists()]
    if not grids:
        return False
    label_w, count = 110, min(per_model, grid_size * grid_size)
    canvas = Image.new("RGB", (label_w + count * cell, len(grids) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, grid) in enumerate(grids):
        side = grid.width // grid_size
        for j in range(count):
            r, c = divmod(j, grid_size)
            tile = grid.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
            canvas.paste(tile.resize((cell, cell), Image.NEAREST), (label_w + j * cell, i * cell))
        draw.text((6, i * cell + cell // 2 - 6), name, fill=(0, 0, 0))
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return True


def result_cells(row: Row, loss_type: str, floors: dict[str, handoff.Floor] | None = None) -> list[str]:
    if not row.trained:
        return [row.model, row.status] + ["–"] * (len(RESULT_COLUMNS) - 2)
    s, m = row.stats, row.metrics
    suffix = label(m.label_key).suffix
    fid = fid_cell(m) + suffix
    ppl = f"{metric(m.ppl.value)} in {m.ppl.space.upper()}{label(m.ppl.label_key).suffix}"
    resolutions = " → ".join(map(str, s.resolutions_reached)) if len(s.resolutions_reached) > 1 else str(s.resolution)
    return [
        row.model,
        "trained",
        resolutions,
        f"{millions(s.params_G)} / {millions(s.params_D)}",
        fmt(s.kimg),
        hours_label(s),
        fmt(s.img_per_s, 1),
        memory_label(s),
        fid,
        f"{metric(m.kid.value * 1e3)} (n={m.num_gen}){suffix}",
        ppl,
        f"{fmt(m.knn.precision, 3)} (n={m.knn.num}){suffix}",
        f"{fmt(m.knn.recall, 3)} (n={m.knn.num}){suffix}",
        stability_notes(row, loss_type, floors),
    ]


def count_cells(row: Row) -> list[str] | None:
    if not isinstance(row.metrics, handoff.ModelMetrics):
        return None
    m = row.metrics
    per_point = sorted({p.num_gen for p in row.curve})
    return [
        row.model,
        str(m.num_gen),
        str(m.fid.sets),
        str(m.num_ref),
        str(m.knn.num),
        str(m.ppl.num),
        str(len(row.curve)),
        ", ".join(map(str, per_point)) or "–",
    ]


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def augmented(rows: list[Row]) -> list[Row]:
    """The trained rows whose history has ADA's p (models trained with augmentation)."""
    return [
        r
        for r in rows
        if isinstance(r.stats, handoff.TrainedRun) and any(h.augment_p is not None for h in r.stats.history)
    ]


def plot_fid_curves(rows: list[Row], out: Path, axis: str, x_key: str = "kimg") -> bool:
    """FID vs kimg (or training hours); by kimg, ADA's p over the same axis beside it for the models that have one."""
    curves = [r for r in rows if r.curve and all(getattr(p, x_key) is not None for p in r.curve)]
    if not curves:
        return False
    with_p = augmented(rows) if x_key == "kimg" else []
    fig, axes = plt.subplots(1, 2 if with_p else 1, figsize=(12 if with_p else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    if with_p:
        plot_augment_p(with_p, axes[0][1])
    for row in curves:
        name = row.model if x_key == "kimg" else f"{row.model} ({device_kind(row.stats)})"
        ax.plot([getattr(p, x_key) for p in row.curve], [p.fid for p in row.curve], marker="o", label=name)
    by_kimg = x_key == "kimg"
    ax.set_xlabel("kimg (thousands of real images shown to D)" if by_kimg else "training hours (device in legend)")
    ax.set_ylabel(axis)
    ax.set_title(f"{axis} vs {'images seen' if by_kimg else 'training time'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)
    return True


def plot_augment_p(rows: list[Row], ax) -> None:
    for row in rows:
        points = [(h.kimg, h.augment_p) for h in row.stats.history if h.augment_p is not None]
        ax.plot(*zip(*points), marker=".", label=f"{row.model} ({row.stats.augment})")
    ax.set_xlabel("kimg")
    ax.set_ylabel("ADA p")
    ax.set_title("ADA's augmentation probability p (adapted towards E[sign D(real)] = target)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_losses(rows: list[Row], out: Path) -> bool:
    from facegan.training.terms import D_ADVERSARIAL, G_ADVERSARIAL

    trained = [r for r in rows if isinstance(r.stats, handoff.TrainedRun) and r.stats.history]
    if not trained:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in trained:
        hist = row.stats.history
        for ax, key in zip(axes, (D_ADVERSARIAL, G_ADVERSARIAL)):
            ax.plot([h.kimg for h in hist], [h.losses[key] for h in hist], marker=".", label=row.model)
    for ax, key in zip(axes, ("D loss", "G loss")):
        ax.set_xlabel("kimg")
        ax.set_title(f"{key} (mean per log interval; loss types differ per model)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out)
    return True


RECIPE_COLUMNS = ["model", "precision", "D's units", "augmentation", "x-flips", "G EMA", "sampling"]


def recipe_cells(stats: handoff.TrainedRun) -> list[str]:
    """How a model trained, as its official recipe fixes it (models/<model>.py lists the deviations)."""
    augment = {
        "none": "none",
        "cosine": f"p on R3GAN's cosine schedule, {fmt(stats.augment_p, 3)} at the end",
    }.get(stats.augment, f"ADA {stats.augment}, p {fmt(stats.augment_p, 3)} at the end")
    units = {"unit": "[-1, 1]", "imagenet": "ImageNet-normalised (official)"}.get(stats.data_space, stats.data_space)
    ema = "none (G itself)" if stats.ema_kimg <= 0 else f"half-life {half_life(stats.ema_kimg)}"
    sampling = (
        "G_ema's BatchNorm statistics re-estimated for its weights (official: batch statistics)"
        if stats.batchnorm == "re-estimated"
        else "G_ema"
    )
    return [stats.model, stats.precision, units, augment, "yes" if stats.xflip else "no", ema, sampling]


def recipe_section(rows: list[Row]) -> str:
    trained = [r.stats for r in rows if isinstance(r.stats, handoff.TrainedRun)]
    if not trained:
        return ""
    return "\n## Training recipe\n\n" + markdown_table(RECIPE_COLUMNS, [recipe_cells(s) for s in trained])


def settings_section(view: handoff.ReportView, meta: handoff.ReferenceMeta, rows: list[Row]) -> str:
    """Where the numbers come from: the data, the features and their floors, each metric's settings and seeds,
    the evaluate params and any kernel fallback."""
    trained = [r for r in rows if r.trained]
    lines = reference_lines(view, meta)
    if trained:
        lines += metric_lines(trained)
    eval_params = view.evaluate
    lines.append(
        f"- evaluate params: num_gen {eval_params.num_gen}, num_ref {eval_params.num_ref}, snapshot_num_gen "
        f"{eval_params.snapshot_num_gen}, ppl_samples {eval_params.ppl_samples}, "
        f"extractor `{eval_params.extractor}`, lpips `{eval_params.lpips}`"
    )
    lines += fallback_lines(rows)
    return "\n".join(lines) + "\n"


def reference_lines(view: handoff.ReportView, meta: handoff.ReferenceMeta) -> list[str]:
    """The run, the data, the feature networks, the real-vs-real floors and the feature chain."""
    lines = [
        f"- profile `{view.profile}`, model selection `{view.model}`, training seed {view.seed}",
        f"- data: source `{meta.source}`, {meta.cache_count} faces in the cache ({view.data.num_faces} requested), "
        f"{meta.resolution}x{meta.resolution}",
        f"- features: {label(meta.label_key).description}; reference statistics from {meta.count} real faces",
        f"- Inception file: `{meta.weights or 'none (proxy network)'}`" + (f"; {meta.choice}" if meta.choice else ""),
        "- real-vs-real floors: "
        + ", ".join(f"n={f.n}: FID {metric(f.fid)}, KID×10³ {metric(f.kid * 1e3)}" for f in meta.floors.values()),
        *knn_floor_lines(meta.floors),
        f"- feature chain: {meta.chain.crop} → {meta.chain.resolution}x{meta.chain.resolution} → "
        f"{meta.chain.resize} → `{meta.chain.extractor}` (evaluate refuses statistics of any other chain)",
    ]
    if meta.dinov2 is not None:
        dino = meta.dinov2
        lines.append(
            f"- FD-DINOv2: {label(dino.label_key).description}; `{dino.network}`, PIL bicubic resize, ImageNet "
            f"normalisation, CLS token; file `{dino.weights or 'none (random weights)'}`; floors "
            + ", ".join(f"n={f.n}: {metric(f.fid)}" for f in dino.floors.values())
        )
    if meta.agreement:
        agreement = meta.agreement
        lines.append(
            "- fid-helper vs clean-fid Inception: "
            + (
                f"checked on {agreement['images']} faces, largest relative feature difference "
                f"{agreement['max_rel_diff']:.1e}"
                if agreement.get("checked")
                else f"not checked ({agreement.get('reason', '')})"
            )
        )
    return lines


def metric_lines(trained: list[Row]) -> list[str]:
    """Each metric's formula, settings and seeds (the first trained model's; every model shares them)."""
    first = trained[0].metrics
    spaces = ", ".join(f"{r.model}: {r.metrics.ppl.space.upper()}" for r in trained)
    return [
        f"- FID/KID: clean-fid `clean` mode formulas; KID from 100 subsets of up to 1000; FID spread over "
        f"{first.fid.sets} generated set(s), seeds {first.seeds.get('fid')}",
        f"- precision/recall: Kynkaanniemi et al. 2019, density/coverage: Naeem et al. 2020, k={first.knn.k}, "
        "on the same features, one batched pass",
        f"- FID∞: FID at {len(first.fid.by_n)} sample counts of the first set, least-squares line in 1/n, "
        "its value at 1/n = 0 (Chong & Forsyth 2020); KID at three of those n: "
        + ", ".join(f"n={n}: {metric(v * 1e3)}" for n, v in first.kid.by_n.items())
        + " (×10³, first model)",
        f"- PPL: {label(first.ppl.label_key).description}, ε={first.ppl.epsilon}, `{first.ppl.sampling}` "
        f"sampling, face crop {'on' if first.ppl.crop else 'off'}, 1%/99% trimmed mean; space per model: {spaces}",
        f"- evaluation seeds: FID-vs-kimg {first.seeds.get('snapshots')}, PPL {first.seeds.get('ppl')}, "
        f"pictures {first.seeds.get('pictures')}",
    ]


def fallback_lines(rows: list[Row]) -> list[str]:
    """Custom ops that ran on the PyTorch reference because their Triton kernel failed (recorded by training)."""
    return [
        f"- **kernel fallback** in {row.model}: `{op}` ran on the PyTorch reference after its Triton "
        f"kernel failed ({error.splitlines()[0][:120]})"
        for row in rows
        if isinstance(row.stats, handoff.TrainedRun)
        for op, error in row.stats.kernel_fallbacks.items()
    ]


def knn_floor_lines(floors: dict[str, handoff.Floor]) -> list[str]:
    """The real-vs-real range of the k-NN metrics and the feature spread, where the floors have one."""
    lines = []
    for floor in floors.values():
        knn = floor.knn
        if knn is None:
            continue
        spans = ", ".join(
            f"{name} {span.low:.2f}–{span.high:.2f}"
            for name, span in (
                ("precision", knn.precision),
                ("recall", knn.recall),
                ("density", knn.density),
                ("coverage", knn.coverage),
                ("feature spread", knn.spread_ratio),
            )
        )
        lines.append(
            f"- real-vs-real range at n={floor.n}, k={knn.k} (two disjoint sets of real faces, {knn.splits} random "
            f"halvings): {spans}"
        )
    return lines


def banner_section(view: handoff.ReportView, meta: handoff.ReferenceMeta, rows: list[Row]) -> str:
    """What every number below must be read with: synthetic data, stand-in networks, params notes."""
    parts = []
    if meta.synthetic:
        parts.append(
            "> **Data: synthetic stand-in faces** (the embedded demo source), not CelebA. "
            "Numbers here say nothing about CelebA.\n\n"
        )
    banners = [label(meta.label_key).banner] + sorted(
        {label(r.metrics.ppl.label_key).banner for r in rows if r.trained}
        | {label(r.metrics.fd_dinov2.label_key).banner for r in rows if r.trained and r.metrics.fd_dinov2 is not None}
    )
    parts += [f"> {banner}\n\n" for banner in banners if banner]
    parts += [f"> **Params:** {note}\n\n" for note in view.notes]
    return "".join(parts)


STABILITY_RULES = (
    f"\nStability notes are heuristics on the files: D's loss below {D_WINS_LOSS} on each of the last "
    f"{D_WINS_ROWS} logged rows (non-saturating/hinge losses); the final snapshot's FID above {FID_WORSENED}x "
    "the best one's (3+ snapshots at the final resolution) by more than the real-vs-real FID floor at the "
    f"snapshots' n; recall below {LOW_RECALL} with precision inside the real-vs-real range; generated-feature "
    f"variance below {LOW_SPREAD}x the real one; non-finite losses. Recall and spread are only flagged below "
    "the range that two disjoint sets of real faces span at the same n (Settings): inside it, the note says "
    "the sample is too small to tell. Kernel fallbacks are listed under Settings.\n"
)


def plots_section(rows: list[Row], figures: Path, axis: str) -> str:
    """FID vs kimg (with ADA's p) and vs training time, and the losses, each where some row has the data."""
    plots = [
        (
            "fid_vs_kimg",
            f"{axis} vs kimg" + (" and ADA's p" if augmented(rows) else ""),
            lambda out: plot_fid_curves(rows, out, axis),
        ),
        ("fid_vs_time", f"{axis} vs training time", lambda out: plot_fid_curves(rows, out, axis, "train_hours")),
        ("losses", "Losses", lambda out: plot_losses(rows, out)),
    ]
    return "".join(
        f"\n## {title}\n\n![{title}](figures/{name}.png)\n"
        for name, title, draw in plots
        if draw(figures / f"{name}.png")
    )


def pictures_section(rows: list[Row], figures: Path) -> str:
    """Each model's pictures (copied next to the report) and a growing model's last grid per resolution."""
    parts = ["\n## Pictures\n"]
    for row in rows:
        parts.append(f"\n### {row.model}\n\n")
        if not row.trained:
            parts.append(f"{row.status}\n")
            continue
        evals = paths.eval_dir(row.model)
        for name, caption in PICTURES:
            if (evals / f"{name}.png").exists():
                shutil.copy(evals / f"{name}.png", figures / f"{row.model}_{name}.png")
                parts.append(f"{caption}:\n\n![{row.model} {name}](figures/{row.model}_{name}.png)\n\n")
        for grid in sorted(evals.glob("res*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)):
            shutil.copy(grid, figures / f"{row.model}_{grid.name}")
            parts.append(
                f"training grid at {grid.stem[3:]}x{grid.stem[3:]}:\n\n"
                f"![{row.model} {grid.stem}](figures/{row.model}_{grid.name})\n\n"
            )
    return "".join(parts)


def render(view: handoff.ReportView, meta: handoff.ReferenceMeta, out_dir: Path = paths.REPORTS_DIR) -> str:
    rows = collect(view.models)
    figures = out_dir / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # figures of models no longer evaluated must not linger
    figures.mkdir(parents=True)
    axis = label(meta.label_key).axis
    parts = ["# facegan-study: comparison\n\n", banner_section(view, meta, rows)]
    if samples_overview(rows, figures / "samples_overview.png", view.evaluate.grid_size):
        parts.append("## Samples, one row per model\n\n![samples of every model](figures/samples_overview.png)\n\n")
    parts += [f"## Ranking by {axis}\n\n", ranking_section(rows)]
    parts += ["\n## Settings\n\n", settings_section(view, meta, rows)]
    table = [result_cells(r, view.loss_types[r.model], meta.floors) for r in rows]
    parts += ["\n## Results\n\n", markdown_table(RESULT_COLUMNS, table), recipe_section(rows), STABILITY_RULES]
    parts += ["\n### Sample counts\n\n", markdown_table(COUNT_COLUMNS, [c for c in map(count_cells, rows) if c])]
    parts += [equal_time_section(rows), tune_section(view.models, figures)]
    parts += [plots_section(rows, figures, axis), pictures_section(rows, figures)]
    text = "".join(parts)
    write_text(out_dir / "comparison.md", text)
    return text
