"""Stage `evaluate@<model>`: every metric of a trained generator, FID along its snapshots, and its pictures.

Writes metrics/<model>.json (the numbers `dvc metrics show` and the report read: FID (mean/std over
evaluate.fid_seeds generated sets), KID, precision/recall, PPL, each with its sample count, the
extractor's label and the seeds) and evals/<model>/:
  fid_vs_kimg.json   one point per training snapshot (kimg, training hours, FID, sample count, the
                     resolution the snapshot generated at: below the final one for a growing model)
  losses.json        the training history (for the DVC loss plots)
  samples.png        a grid of fixed latents
  truncation.png     style-based models: rows of latents, columns of evaluate.truncation_psis
  interpolation.png  slerp in Z (row 1) and, for style-based models, linear interpolation in W (row 2)
  res<R>.png         progressive models: the last training grid at each resolution, when training wrote them
"""
from __future__ import annotations

import logging
import re
import shutil
import time

import numpy as np
import torch
from PIL import Image

import models
from facegan import paths, stage_params
from facegan.data.cache import to_uint8
from facegan.device import resolve_device
from facegan.errors import UserError, stage_main
from facegan.io import atomic_dir, read_json, write_json
from facegan.metrics import visuals
from facegan.metrics.features import build_extractor, extract
from facegan.metrics.fid import fid_from_features, kid_from_features, spread
from facegan.metrics.ppl import build_lpips, path_length
from facegan.metrics.precision_recall import precision_recall
from facegan.training import checkpoint
from stages import start_model_stage

log = logging.getLogger("evaluate")
PROGRESSIVE_GRID = re.compile(r"res(\d+)_.*\.png")


def load_generator(model: str, params: dict, weights: dict, device: torch.device):
    return models.from_snapshot(model, params["models"][model]["arch"], params["data"]["resolution"], weights).to(device)


def generated_batches(G, count: int, batch_size: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch_size):
        z = torch.randn(min(batch_size, count - start), G.z_dim, generator=gen)
        with torch.no_grad():
            yield to_uint8(G(z.to(device)))


def seeds_for(seed: int, fid_seeds: int) -> dict:
    """Every random draw of the evaluation, derived from params `seed` (disjoint from training's)."""
    return {"fid": [seed + 1000 + i for i in range(fid_seeds)], "snapshots": seed + 2000, "ppl": seed + 3000,
            "pictures": seed + 4000, "kid_subsets": seed}


def train_hours_at(kimg: float, history: list[dict]) -> float | None:
    """Training time when a snapshot was taken, from the history's (kimg, train_seconds) points."""
    if not history:
        return None
    return float(np.interp(kimg, [h["kimg"] for h in history], [h["train_seconds"] for h in history])) / 3600


def ppl_space(ev: dict, style_based: bool, model: str) -> str:
    if ev["ppl_space"] == "auto":
        return "w" if style_based else "z"
    if ev["ppl_space"] == "w" and not style_based:
        raise UserError(f"evaluate.ppl_space=w needs a style-based generator and {model} is not: use auto or z")
    return ev["ppl_space"]


def save_png(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path, format="PNG")


def write_skipped(model: str, stats: dict) -> None:
    write_json(paths.metrics_file(model), {"status": stats["status"], "reason": stats.get("reason", "")})
    with atomic_dir(paths.eval_dir(model)) as out:
        write_json(out / "fid_vs_kimg.json", [])
        write_json(out / "losses.json", [])


@stage_main
def main() -> None:
    model = start_model_stage(__doc__)
    params = stage_params.load("evaluate", model)
    ev = params["evaluate"]
    run = paths.run_dir(model)
    stats = read_json(run / "train_stats.json")
    if stats["status"] != "trained":
        write_skipped(model, stats)
        return

    device = resolve_device(ev["device"])
    reference = np.load(paths.REFERENCE_DIR / "features.npz")["features"]
    ref_meta = read_json(paths.REFERENCE_DIR / "meta.json")
    extractor = build_extractor(ev["extractor"], ev, device)
    if ref_meta["extractor"] != extractor.kind:
        raise UserError(f"reference features use {ref_meta['extractor']} but evaluate.extractor={extractor.kind}: "
                        "run `dvc repro reference_stats`")
    spec = models.get_spec(model)
    G = load_generator(model, params, checkpoint.load(run / "G_ema.pt"), device)
    seeds = seeds_for(params["seed"], ev["fid_seeds"])
    timings = {}

    t0 = time.perf_counter()
    fids, first = [], None
    for seed in seeds["fid"]:
        feats = extract(generated_batches(G, ev["num_gen"], ev["batch_size"], seed, device), extractor)
        fids.append(fid_from_features(feats, reference))
        first = feats if first is None else first
    fid = spread(fids)
    pr = precision_recall(reference, first, ev["pr_k"], device)
    metrics = {
        "status": "trained", "model": model, "extractor": extractor.kind, "label_key": ref_meta.get("label_key", extractor.kind),
        "label": ref_meta.get("label", extractor.label),
        "fid": fid["mean"], "fid_std": fid["std"], "fid_values": fid["values"], "fid_seeds": len(fids),
        "kid": kid_from_features(first, reference, seeds["kid_subsets"]),
        "num_gen": int(len(first)), "num_ref": int(len(reference)),
        "precision": pr["precision"], "recall": pr["recall"], "pr_num": pr["num"], "pr_k": pr["k"],
        # generated-set feature spread relative to the real set's: far below 1 is a mode-collapse sign
        "feature_spread_ratio": float(np.trace(np.cov(first, rowvar=False)) / np.trace(np.cov(reference, rowvar=False))),
    }
    timings["fid_kid_pr"] = time.perf_counter() - t0
    log.info("%s: %s %.3f (std %.3f over %d sets of %d), precision %.3f, recall %.3f", model, extractor.kind,
             fid["mean"], fid["std"], len(fids), len(first), pr["precision"], pr["recall"])

    t0 = time.perf_counter()
    space = ppl_space(ev, spec.style_based, model)
    ppl = path_length(G, build_lpips(ev["lpips"], ev["lpips_weights"], device), space, ev["ppl_sampling"], ev["ppl_samples"],
                      ev["ppl_epsilon"], ev["batch_size"], seeds["ppl"], ev["ppl_crop"], device)
    metrics.update({"ppl": ppl["ppl"], "ppl_num": ppl["num"], "ppl_space": ppl["space"], "ppl_sampling": ppl["sampling"],
                    "ppl_epsilon": ppl["epsilon"], "ppl_crop": ev["ppl_crop"], "ppl_lpips": ppl["lpips"], "ppl_label": ppl["label"]})
    timings["ppl"] = time.perf_counter() - t0
    log.info("%s: PPL in %s (%s, %s LPIPS) %.2f over %d pairs", model, space.upper(), ev["ppl_sampling"], ppl["lpips"],
             ppl["ppl"], ppl["num"])

    t0 = time.perf_counter()
    history = stats.get("history", [])
    curve = []
    for snap in sorted((run / "snapshots").glob("*.pt")):
        weights = checkpoint.load(snap)
        G_snap = load_generator(model, params, weights, device)
        snap_feats = extract(generated_batches(G_snap, ev["snapshot_num_gen"], ev["batch_size"], seeds["snapshots"], device), extractor)
        kimg = float(weights["kimg"])
        # a growing model's snapshot shows its level's image, nearest-upsampled to the output size
        level = int(weights.get("level", np.log2(params["data"]["resolution"]) - 2))
        curve.append({"kimg": kimg, "train_hours": train_hours_at(kimg, history), "fid": fid_from_features(snap_feats, reference),
                      "num_gen": int(len(snap_feats)), "extractor": extractor.kind, "resolution": 4 * 2 ** level})
        log.info("%s at %.2f kimg (%dx%d): %s %.4g", model, kimg, 4 * 2 ** level, 4 * 2 ** level, extractor.kind,
                 curve[-1]["fid"])
    timings["snapshots"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with atomic_dir(paths.eval_dir(model)) as out:
        write_json(out / "fid_vs_kimg.json", curve)
        write_json(out / "losses.json", history)
        pic_seed = seeds["pictures"]
        save_png(visuals.sample_grid(G, ev["grid_size"], pic_seed, device), out / "samples.png")
        save_png(visuals.interpolation_strips(G, spec.style_based, ev["interpolation_steps"], pic_seed, device),
                 out / "interpolation.png")
        if spec.style_based:
            save_png(visuals.truncation_sweep(G, ev["truncation_psis"], ev["truncation_rows"], pic_seed, device),
                     out / "truncation.png")
        last_per_res = {}
        for grid in sorted((run / "samples").glob("res*_*.png")):
            match = PROGRESSIVE_GRID.fullmatch(grid.name)
            if match:
                last_per_res[int(match.group(1))] = grid
        for res, grid in sorted(last_per_res.items()):
            shutil.copy(grid, out / f"res{res}.png")
    timings["pictures"] = time.perf_counter() - t0
    metrics["eval_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    metrics["seeds"] = {"fid": seeds["fid"], "snapshots": seeds["snapshots"], "ppl": seeds["ppl"], "pictures": seeds["pictures"]}
    write_json(paths.metrics_file(model), metrics)


if __name__ == "__main__":
    main()
