"""`python -m facegan.generate`: images from any trained model of the study, by seed.

Our counterpart of NVlabs' `gen_images.py` (stylegan3 repository), option by option:

  gen_images.py              here
  --network PKL              --model NAME: runs/<model>/G_ema.pt, built from runs/config/<model>.json
  --seeds 0-7 / 1,5,9        --seeds, the same syntax: inclusive ranges and comma lists
  --trunc PSI                --trunc PSI, in [0, 2]: G(z, truncation_psi=psi) (w_avg + psi (w - w_avg)
                             for the style-based models; DCGAN and PGGAN scale z by psi)
  --noise-mode               --noise-mode const|random|none, for the models with noise inputs
                             (StyleGAN, StyleGAN2); StyleGAN3 and StyleSwin have none
  --outdir                   --outdir, default out/<model>/; one seed<seed:04d>.png per seed
  --class, --translate,      not offered: our models are unconditional, and StyleGAN3's input
  --rotate                   transform is not exposed by our generator

and, beyond gen_images.py, `--walk` lays the seeds out as one grid, as interpolation strips (slerp
in Z and, for style-based models, a second row lerping in W, as the evaluate stage's
interpolation.png), or as a looping GIF through the seeds (in W for style-based models, as
NVlabs' gen_video.py walks, in Z by slerp for the others).

Latents: seed s gives z = torch.randn(z_dim, generator=torch.Generator().manual_seed(s)), drawn on
the CPU and then moved, so a seed gives the same z on every device and run. (NVlabs draws
np.random.RandomState(s).randn(1, z_dim): the same seed gives another z there.) Each image is
generated alone, so a seed's image does not depend on which other seeds were asked for, and under
a random state seeded by the seed, so --noise-mode random repeats too (NVlabs' random noise does
not); frames of a walk all use the first seed's state, so the noise stays put along the walk.
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
from facegan import checkpoint, handoff, stage_params
from facegan.data.cache import make_grid, to_uint8
from facegan.device import resolve_device
from facegan.errors import UserError, stage_main
from facegan.io import atomic_path
from facegan.metrics.ppl import generate_same_noise, slerp

WALKS = ("images", "grid", "strip", "gif")
NOISE_MODES = ("const", "random", "none")
MAX_PSI = 2.0  # beyond w_avg's far side by a whole (w - w_avg): already off the learned manifold
MAX_SEED = 2**32 - 1  # the seeds NVlabs' RandomState accepts; torch takes them all
GIF_FRAME_MS = 80  # 12.5 frames/s: a step between neighbouring frames reads as motion, not a cut
SEEDS_SYNTAX = "write a range '0-7' (inclusive), a list '1,5,9', or both '0-3,10'"
NOT_RUN_DIRS = ("config", "logs")  # folders under runs/ that are not models


# ------------------------------------------------------------------------------------------------
# Command line


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose mistakes end as one `error:` line (stage_main) instead of usage plus error."""

    def error(self, message: str):
        raise UserError(f"{message} (see `python -m facegan.generate --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m facegan.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model with a finished train stage, e.g. stylegan2")
    parser.add_argument("--seeds", default="0-7", help="latent seeds: '0-7', '1,5,9' or '0-3,10' (default 0-7)")
    parser.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi in [0, 2]")
    parser.add_argument(
        "--noise-mode", choices=NOISE_MODES, help="noise inputs (StyleGAN, StyleGAN2 only; default const)"
    )
    parser.add_argument("--walk", choices=WALKS, default="images", help="layout of the output (default images)")
    parser.add_argument("--frames", type=int, default=8, help="strip/gif: frames per pair of seeds (default 8)")
    parser.add_argument("--outdir", type=Path, help="where to write (default out/<model>/)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="the train stages' outputs")
    parser.add_argument("--config-dir", type=Path, help="the params views (default <runs-dir>/config)")
    return parser


def parse_seeds(text: str) -> list[int]:
    """'0-3,10' -> [0, 1, 2, 3, 10], as NVlabs' parse_range; any other text is one line naming the syntax."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise UserError(f"--seeds {text!r}: {seeds_problem(part)}; {SEEDS_SYNTAX}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise UserError(f"--seeds {text!r}: the range {part} runs backwards (write {last}-{first}); {SEEDS_SYNTAX}")
        if last > MAX_SEED:
            raise UserError(f"--seeds {text!r}: seeds go up to {MAX_SEED}; {SEEDS_SYNTAX}")
        seeds.extend(range(first, last + 1))
    return seeds


def seeds_problem(part: str) -> str:
    if not part:
        return "a seed is empty"
    if part.startswith("-"):
        return f"seeds are non-negative, got {part}"
    return f"{part!r} is not a seed or a range of seeds"


def check_options(args: argparse.Namespace, seeds: list[int]) -> None:
    if not 0.0 <= args.trunc <= MAX_PSI:  # also refuses NaN
        raise UserError(f"--trunc {args.trunc}: the truncation psi must lie in [0, {MAX_PSI:g}] (1 = no truncation)")
    if args.walk in ("strip", "gif") and len(seeds) < 2:
        raise UserError(f"--walk {args.walk} walks between seeds: give at least two, e.g. --seeds 0-3")
    if args.walk in ("strip", "gif") and args.frames < 2:
        raise UserError(f"--frames {args.frames}: a walk needs at least 2 frames per pair of seeds")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible: use --device auto or --device cpu")


# ------------------------------------------------------------------------------------------------
# The trained run


def models_with_runs(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if p.name not in NOT_RUN_DIRS and (p / "G_ema.pt").exists())


def train_hint(model: str) -> str:
    return f"train it with `dvc repro train-{model}` or `dvc exp run -S model={model}`"


def find_run(model: str, runs_dir: Path, config_dir: Path) -> Path:
    """runs/<model>/, or one line saying why there is none and which models do have runs."""
    run = runs_dir / model
    if run.is_dir() and model not in NOT_RUN_DIRS:
        return run
    have = ", ".join(models_with_runs(runs_dir)) or "none yet"
    if not stage_params.config_file(model, config_dir).exists():
        raise UserError(
            f"unknown model '{model}' (no {run}/ and no {config_dir}/{model}.json); models with runs: {have}"
        )
    raise UserError(f"model '{model}' has no run ({run}/ is missing): {train_hint(model)}; models with runs: {have}")


def check_trained(model: str, run: Path) -> handoff.TrainedRun:
    """The run's train stats; a skipped or unfinished run is one line naming the command that trains it."""
    stats_file, weights = run / "train_stats.json", run / "G_ema.pt"
    if not stats_file.exists():
        raise UserError(f"model '{model}' is not trained ({stats_file} is missing): {train_hint(model)}")
    stats = handoff.read_train_stats(stats_file)
    if isinstance(stats, handoff.SkippedRun):
        raise UserError(f"model '{model}' was not trained in this experiment ({stats.reason}): {train_hint(model)}")
    if not weights.exists():
        raise UserError(f"model '{model}' is not trained ({weights} is missing): {train_hint(model)}")
    return stats


def load_generator(model: str, run: Path, config_dir: Path, device: torch.device) -> torch.nn.Module:
    """G_ema as the train stage left it, built from the same params view it was trained with."""
    stats = check_trained(model, run)
    view = stage_params.load_model(model, config_dir)
    retrain = f"re-run `dvc repro train-{model}`"
    if view.resolution != stats.resolution:
        raise UserError(
            f"{run} was trained at {stats.resolution}x{stats.resolution} but the params now say "
            f"{view.resolution}x{view.resolution}: {retrain}"
        )
    state = checkpoint.load(run / "G_ema.pt", fix=retrain)
    try:
        G = models.from_snapshot(model, view.params.arch, view.resolution, state)
    except RuntimeError as err:  # load_state_dict: the arch params changed since training
        raise UserError(f"{run}/G_ema.pt does not fit models.{model}.arch of the current params: {retrain}") from err
    return G.to(device)


# ------------------------------------------------------------------------------------------------
# Generating


def accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass(frozen=True)
class Sampler:
    """G with the run's choices (psi, noise) applied; every call returns (N, H, W, C) uint8 images."""

    G: torch.nn.Module
    style_based: bool
    psi: float
    noise_mode: str | None  # None: the model has no noise inputs
    device: torch.device

    def latent(self, seed: int) -> torch.Tensor:
        return torch.randn(self.G.z_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)

    def from_z(self, z: torch.Tensor, noise_seed: int) -> np.ndarray:
        noise = {} if self.noise_mode is None else {"noise_mode": self.noise_mode}
        return one_by_one(lambda zz: self.G(zz, truncation_psi=self.psi, **noise), z, noise_seed)

    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.G.mapping(z, truncation_psi=self.psi)

    def from_w(self, ws: torch.Tensor, noise_seed: int) -> np.ndarray:
        noise = {} if self.noise_mode is None else {"noise_mode": self.noise_mode}
        return one_by_one(lambda w: self.G.synthesis(w, **noise), ws, noise_seed)


def one_by_one(fn: Callable, latents: torch.Tensor, noise_seed: int) -> np.ndarray:
    """One image per latent, each alone and under the same random state (see the module docstring)."""
    return np.concatenate([to_uint8(generate_same_noise(fn, x[None], noise_seed)) for x in latents])


def make_sampler(G: torch.nn.Module, model: str, psi: float, noise_mode: str | None, device) -> Sampler:
    has_noise = accepts(G.forward, "noise_mode")
    if noise_mode is not None and not has_noise:
        raise UserError(f"--noise-mode: {model} has no noise inputs (only stylegan and stylegan2 do); leave it out")
    if has_noise and noise_mode is None:
        noise_mode = "const"  # NVlabs' default: the same image for a seed, every time
    return Sampler(G, models.get_spec(model).style_based, psi, noise_mode, device)


def seed_images(sampler: Sampler, seeds: list[int]) -> list[np.ndarray]:
    return [sampler.from_z(sampler.latent(seed)[None], seed)[0] for seed in seeds]


def strip_rows(sampler: Sampler, seeds: list[int], frames: int) -> np.ndarray:
    """For each pair of consecutive seeds, a row slerping in Z and (style-based) a row lerping in W."""
    t = torch.linspace(0, 1, frames, device=sampler.device)
    rows = []
    for start, end in zip(seeds, seeds[1:]):
        z_a, z_b = sampler.latent(start)[None], sampler.latent(end)[None]
        rows.append(sampler.from_z(slerp(z_a.expand(frames, -1), z_b.expand(frames, -1), t), start))
        if sampler.style_based:
            w_a, w_b = sampler.to_w(z_a), sampler.to_w(z_b)
            rows.append(sampler.from_w(torch.lerp(w_a, w_b, t.reshape(-1, 1, 1)), start))
    return make_grid(np.concatenate(rows), frames)


def walk_frames(sampler: Sampler, seeds: list[int], frames: int) -> np.ndarray:
    """A closed loop seeds[0] -> ... -> seeds[-1] -> seeds[0], `frames` per pair, each seed's frame once."""
    z = torch.stack([sampler.latent(seed) for seed in [*seeds, seeds[0]]])
    t = torch.arange(frames, device=sampler.device) / frames  # stops short of 1: that frame starts the next pair
    if sampler.style_based:  # W, where interpolation is the smoother (StyleGAN sec. 4.2)
        w = sampler.to_w(z)
        path = torch.cat([torch.lerp(a[None], b[None], t.reshape(-1, 1, 1)) for a, b in zip(w, w[1:])])
        return sampler.from_w(path, seeds[0])
    path = torch.cat([slerp(a.expand(frames, -1), b.expand(frames, -1), t) for a, b in zip(z, z[1:])])
    return sampler.from_z(path, seeds[0])


# ------------------------------------------------------------------------------------------------
# Writing


def seeds_label(seeds: list[int]) -> str:
    """A file-name form of the seeds: consecutive runs as a-b, joined by '_'; long lists shortened."""
    runs = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    label = "_".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return label if len(label) <= 40 else f"{seeds[0]}-{seeds[-1]}_{len(seeds)}seeds"


def save_png(image: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    return path


def save_gif(frames: np.ndarray, path: Path) -> Path:
    pictures = [Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame) for frame in frames]
    with atomic_path(path) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=GIF_FRAME_MS, loop=0, optimize=False
        )
    return path


@torch.no_grad()
def write_outputs(sampler: Sampler, seeds: list[int], walk: str, frames: int, outdir: Path) -> list[Path]:
    if walk == "images":
        return [
            save_png(image, outdir / f"seed{seed:04d}.png") for seed, image in zip(seeds, seed_images(sampler, seeds))
        ]
    label = seeds_label(seeds)
    if walk == "grid":
        return [save_png(make_grid(np.stack(seed_images(sampler, seeds))), outdir / f"grid_seeds{label}.png")]
    if walk == "strip":
        return [save_png(strip_rows(sampler, seeds, frames), outdir / f"strip_seeds{label}.png")]
    return [save_gif(walk_frames(sampler, seeds, frames), outdir / f"walk_seeds{label}.gif")]


@stage_main
def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    seeds = parse_seeds(args.seeds)
    check_options(args, seeds)
    config_dir = args.config_dir or args.runs_dir / "config"
    run = find_run(args.model, args.runs_dir, config_dir)
    device = resolve_device(args.device)
    G = load_generator(args.model, run, config_dir, device)
    sampler = make_sampler(G, args.model, args.trunc, args.noise_mode, device)
    written = write_outputs(sampler, seeds, args.walk, args.frames, args.outdir or Path("out") / args.model)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
