"""Render reports/comparison.md from the metrics, evals and training-stats files alone (no GPU needed).

Every number in the results tables comes from one field of metrics/<model>.json or
runs/<model>/train_stats.json through the formatting in `result_cells` / `count_cells`
(tests/test_report.py checks each one against the files). Numbers from stand-in networks carry
their label in every table cell and plot: "(proxy)" for the random Inception / random LPIPS
backbone, "(fid-helper, unverified)" for fid-helper's Inception before its agreement check passed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facegan import paths  # noqa: E402
from facegan.io import atomic_path, write_text  # noqa: E402
from facegan.metrics.features import LABELS, TABLE_SUFFIX  # noqa: E402
from facegan.params import MODEL_NAMES  # noqa: E402

STATUS_TEXT = {
    "skipped": "skipped",
    "not_implemented": "not implemented yet",
    "missing": "not run",
}
RESULT_COLUMNS = ("model", "status", "resolution", "params G / D", "kimg", "train time", "img/s", "peak memory",
                  "FID", "KID ×10³", "PPL", "precision", "recall", "stability notes")
COUNT_COLUMNS = ("model", "generated (FID/KID)", "generated sets", "reference", "P&R per set", "PPL pairs",
                 "FID-vs-kimg points", "images per point")
# Stability heuristics (stated under the table): thresholds on what the files hold
D_WINS_LOSS = 0.1  # non-saturating / hinge D loss below this at the end of training
FID_WORSENED = 1.25  # final snapshot FID above this multiple of the best snapshot FID
LOW_RECALL = 0.1
LOW_SPREAD = 0.25  # generated features' total variance / the real features'
PICTURES = (("samples", "samples"), ("truncation", "truncation sweep (ψ per column)"),
            ("interpolation", "interpolation: slerp in Z (top), linear in W (bottom, style-based only)"))


def _load(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.exists() else None


def collect(models: tuple[str, ...] = MODEL_NAMES) -> list[dict]:
    """One record per model: its train stats, metrics and FID curve."""
    rows = []
    for name in models:
        stats = _load(paths.run_dir(name) / "train_stats.json") or {"status": "missing", "reason": "train stage not run"}
        metrics = _load(paths.metrics_file(name)) or {"status": "missing", "reason": "evaluate stage not run"}
        curve = _load(paths.eval_dir(name) / "fid_vs_kimg.json") or []
        rows.append({"model": name, "stats": stats, "metrics": metrics, "curve": curve})
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


def millions(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M"


def device_kind(stats: dict) -> str:
    return "GPU" if str(stats.get("device", "cpu")).startswith("cuda") else "CPU"


def hours_label(stats: dict) -> str:
    if stats.get("train_seconds") is None:
        return "–"
    return f"{stats['train_seconds'] / 3600:.3f} {device_kind(stats)}-h"


def memory_label(stats: dict) -> str:
    if stats.get("peak_memory_bytes") is None:
        return "n/a (CPU)" if device_kind(stats) == "CPU" else "–"
    return f"{stats['peak_memory_bytes'] / 2**30:.2f} GiB"


def feature_suffix(m: dict) -> str:
    return TABLE_SUFFIX.get(m.get("label_key", m.get("extractor")), " (?)")


def stability_notes(row: dict, loss_type: str) -> str:
    """Divergence / collapse signs in the history and metrics; the thresholds are stated in the report."""
    s, m, curve = row["stats"], row["metrics"], row["curve"]
    notes = []
    hist = s.get("history") or []
    if any(not all(isinstance(h.get(k), (int, float)) and abs(h[k]) != float("inf") and h[k] == h[k]
                   for k in ("loss_D", "loss_G")) for h in hist):
        notes.append("non-finite loss (diverged)")
    if hist and loss_type in ("ns", "hinge") and hist[-1]["loss_D"] < D_WINS_LOSS:
        notes.append("D overpowers G (D loss near zero)")
    # a growing model's earlier levels are not candidates for "best": only the final resolution's
    final_res = max((p.get("resolution", 0) for p in curve), default=0)
    final_curve = [p for p in curve if p.get("resolution", 0) == final_res]
    if len(final_curve) >= 3:
        fids = [p["fid"] for p in final_curve]
        best = min(fids)
        if fids[-1] > FID_WORSENED * best and fids.index(best) < len(fids) - 1:
            notes.append("FID worsened after its best snapshot")
    if m.get("recall") is not None and m["recall"] < LOW_RECALL:
        notes.append("low recall (possible mode collapse)")
    if m.get("feature_spread_ratio") is not None and m["feature_spread_ratio"] < LOW_SPREAD:
        notes.append("low feature spread (possible mode collapse)")
    return "; ".join(notes) or "none detected"


def result_cells(row: dict, loss_type: str) -> list[str]:
    s, m = row["stats"], row["metrics"]
    if s["status"] != "trained" or m.get("status") != "trained":
        failed = s if s["status"] != "trained" else m
        status = STATUS_TEXT.get(failed["status"], failed["status"])
        return [row["model"], f"{status}: {failed.get('reason', '')}"] + ["–"] * (len(RESULT_COLUMNS) - 2)
    suffix = feature_suffix(m)
    fid = metric(m["fid"]) + (f" ± {metric(m['fid_std'])}" if m.get("fid_seeds", 1) > 1 else "") + suffix
    ppl = "–" if m.get("ppl") is None else (f"{metric(m['ppl'])} in {m['ppl_space'].upper()}"
                                             + (" (proxy)" if m.get("ppl_lpips") == "proxy" else ""))
    return [row["model"], "trained", str(s.get("resolution_reached", s["resolution"])),
            f"{millions(s['params_G'])} / {millions(s['params_D'])}", fmt(s["kimg"]), hours_label(s), fmt(s["img_per_s"], 1),
            memory_label(s), fid, f"{metric(m['kid'] * 1e3)}{suffix}",
            ppl, fmt(m.get("precision"), 3) + suffix, fmt(m.get("recall"), 3) + suffix, stability_notes(row, loss_type)]


def count_cells(row: dict) -> list[str] | None:
    m, curve = row["metrics"], row["curve"]
    if m.get("status") != "trained":
        return None
    per_point = sorted({p["num_gen"] for p in curve})
    return [row["model"], str(m["num_gen"]), str(m.get("fid_seeds", 1)), str(m["num_ref"]), str(m.get("pr_num", "–")),
            str(m.get("ppl_num", "–")), str(len(curve)), ", ".join(map(str, per_point)) or "–"]


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_fid_curves(rows: list[dict], out: Path, label: str, x_key: str = "kimg") -> bool:
    curves = [r for r in rows if r["curve"] and all(p.get(x_key) is not None for p in r["curve"])]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in curves:
        name = row["model"] if x_key == "kimg" else f"{row['model']} ({device_kind(row['stats'])})"
        ax.plot([p[x_key] for p in row["curve"]], [p["fid"] for p in row["curve"]], marker="o", label=name)
    ax.set_xlabel("kimg (thousands of real images shown to D)" if x_key == "kimg" else "training hours (device in legend)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs {'images seen' if x_key == 'kimg' else 'training time'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)
    return True


def plot_losses(rows: list[dict], out: Path) -> bool:
    trained = [r for r in rows if r["stats"].get("history")]
    if not trained:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in trained:
        hist = row["stats"]["history"]
        for ax, key in zip(axes, ("loss_D", "loss_G")):
            ax.plot([h["kimg"] for h in hist], [h[key] for h in hist], marker=".", label=row["model"])
    for ax, key in zip(axes, ("D loss", "G loss")):
        ax.set_xlabel("kimg")
        ax.set_title(f"{key} (mean per sample interval; loss types differ per model)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, out)
    return True


def settings_section(params: dict, reference_meta: dict, rows: list[dict]) -> str:
    data, ev = params["data"], params["evaluate"]
    trained = [r["metrics"] for r in rows if r["metrics"].get("status") == "trained"]
    first = trained[0] if trained else {}
    ppl_spaces = ", ".join(f"{r['model']}: {r['metrics']['ppl_space'].upper()}" for r in rows
                           if r["metrics"].get("status") == "trained" and r["metrics"].get("ppl_space"))
    lines = [
        f"- profile `{params['profile']}`, model selection `{params['model']}`, training seed {params['seed']}",
        f"- data: source `{reference_meta.get('source', data['source'])}`, {reference_meta.get('cache_count', '?')} faces "
        f"in the cache ({data['num_faces']} requested), {reference_meta.get('resolution', data['resolution'])}x"
        f"{reference_meta.get('resolution', data['resolution'])}",
        f"- features: {reference_meta.get('label', '?')}; reference statistics from {reference_meta.get('count', '?')} real faces",
    ]
    agreement = reference_meta.get("agreement")
    if agreement:
        lines.append("- fid-helper vs clean-fid Inception: " + (
            f"checked on {agreement['images']} faces, largest relative feature difference {agreement['max_rel_diff']:.1e}"
            if agreement.get("checked") else f"not checked ({agreement.get('reason', '')})"))
    if first:
        lines += [
            f"- FID/KID: clean-fid `clean` mode formulas; KID from 100 subsets of up to 1000; FID spread over "
            f"{first.get('fid_seeds', 1)} generated set(s), seeds {first.get('seeds', {}).get('fid')}",
            f"- precision/recall: Kynkaanniemi et al. 2019, k={first.get('pr_k')}, on the same features",
            f"- PPL: {first.get('ppl_label')}, ε={first.get('ppl_epsilon')}, `{first.get('ppl_sampling')}` sampling, "
            f"face crop {'on' if first.get('ppl_crop') else 'off'}, 1%/99% trimmed mean; space per model: {ppl_spaces}",
            f"- evaluation seeds: FID-vs-kimg {first.get('seeds', {}).get('snapshots')}, PPL {first.get('seeds', {}).get('ppl')}, "
            f"pictures {first.get('seeds', {}).get('pictures')}",
        ]
    lines.append(f"- evaluate params: num_gen {ev['num_gen']}, num_ref {ev['num_ref']}, snapshot_num_gen {ev['snapshot_num_gen']}, "
                 f"ppl_samples {ev['ppl_samples']}, extractor `{ev['extractor']}`, lpips `{ev['lpips']}`")
    return "\n".join(lines) + "\n"


def render(params: dict, reference_meta: dict, out_dir: Path = paths.REPORTS_DIR) -> str:
    rows = collect()
    figures = out_dir / "figures"
    if figures.exists():
        shutil.rmtree(figures)  # figures of models no longer evaluated must not linger
    figures.mkdir(parents=True)
    label_key = reference_meta.get("label_key", reference_meta.get("extractor"))
    fid_label = {"proxy": "proxy FID (random Inception, not FID)", "fid_helper_unverified": "FID* (fid-helper, unverified)"}.get(
        label_key, "FID")
    proxy_ppl = any(r["metrics"].get("ppl_lpips") == "proxy" for r in rows)
    parts = ["# facegan-study: comparison\n\n"]
    if reference_meta.get("synthetic") or params["data"]["source"] == "synthetic":
        parts.append("> **Data: synthetic stand-in faces** (the embedded demo source), not CelebA. "
                     "Numbers here say nothing about CelebA.\n\n")
    if label_key == "proxy":
        parts.append("> **FID/KID/precision/recall use the PROXY extractor** (a seeded random Inception-v3, offline "
                     "stand-in): values marked (proxy) are not comparable with published FID.\n\n")
    elif label_key == "fid_helper_unverified":
        parts.append(f"> **{LABELS['fid_helper_unverified']}**: marked (fid-helper, unverified).\n\n")
    if proxy_ppl:
        parts.append("> **PPL uses the PROXY LPIPS** (random VGG16 backbone, `pnet_rand`): PPL marked (proxy) is not "
                     "comparable with published PPL.\n\n")
    parts += ["## Settings\n\n", settings_section(params, reference_meta, rows)]
    loss_types = {name: params["models"][name]["loss"]["type"] for name in MODEL_NAMES}
    parts += ["\n## Results\n\n", markdown_table(RESULT_COLUMNS, [result_cells(r, loss_types[r["model"]]) for r in rows])]
    parts.append(f"\nStability notes are heuristics on the files: final D loss below {D_WINS_LOSS} (non-saturating/hinge "
                 f"losses); final snapshot FID above {FID_WORSENED}x the best one (3+ snapshots at the final resolution); recall below {LOW_RECALL}; "
                 f"generated-feature variance below {LOW_SPREAD}x the real one; non-finite losses.\n")
    parts += ["\n### Sample counts\n\n", markdown_table(COUNT_COLUMNS, [c for c in map(count_cells, rows) if c])]
    plots = [("fid_vs_kimg", f"{fid_label} vs kimg", lambda out: plot_fid_curves(rows, out, fid_label)),
             ("fid_vs_time", f"{fid_label} vs training time", lambda out: plot_fid_curves(rows, out, fid_label, "train_hours")),
             ("losses", "Losses", lambda out: plot_losses(rows, out))]
    for name, title, draw in plots:
        if draw(figures / f"{name}.png"):
            parts.append(f"\n## {title}\n\n![{title}](figures/{name}.png)\n")
    parts.append("\n## Pictures\n")
    for row in rows:
        parts.append(f"\n### {row['model']}\n\n")
        if row["metrics"].get("status") != "trained":
            parts.append(f"{STATUS_TEXT.get(row['metrics'].get('status'), row['metrics'].get('status'))}\n")
            continue
        evals = paths.eval_dir(row["model"])
        for name, caption in PICTURES:
            if (evals / f"{name}.png").exists():
                shutil.copy(evals / f"{name}.png", figures / f"{row['model']}_{name}.png")
                parts.append(f"{caption}:\n\n![{row['model']} {name}](figures/{row['model']}_{name}.png)\n\n")
        for grid in sorted(evals.glob("res*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)):
            shutil.copy(grid, figures / f"{row['model']}_{grid.name}")
            parts.append(f"training grid at {grid.stem[3:]}x{grid.stem[3:]}:\n\n"
                         f"![{row['model']} {grid.stem}](figures/{row['model']}_{grid.name})\n\n")
    text = "".join(parts)
    write_text(out_dir / "comparison.md", text)
    return text
