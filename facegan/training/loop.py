"""The training loop every model of the study shares.

Read top to bottom: set up (processes, device, precision, networks, optimisers, schedule, data),
resume from the last checkpoint if there is one, then alternate D and G steps with lazy
regularisers until the kimg budget is spent, writing checkpoints, G_ema snapshots, sample grids
and dvclive metrics on the way, and finally the trained G_ema and a stats file. Per-model
behaviour comes from the model's params (loss, learning rates, betas, EMA, progressive schedule)
and from its ModelSpec, never from the model's name.

Progressive models (ModelSpec.progressive) follow facegan/training/progressive.Schedule: every
step sets G, D and G_ema to the phase's level and alpha, reals are average-pooled to the current
resolution and faded between it and the one below exactly like G's output (PGGAN sec. 2), and the
batch size is the phase's. Position is counted in images shown, so resume lands mid-phase.

Determinism: every random draw of a step (sample indices, flips, latents, GP mixing weights) comes
from a generator seeded by (seed, step), and the global RNGs are re-seeded the same way for the
models' own noise, so a resumed run repeats the uninterrupted one, and N data-parallel ranks
see the same global batch as one process (facegan/training/distributed.py).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import models
from facegan import handoff
from facegan.data.cache import FaceCache, save_grid, to_uint8
from facegan.device import resolve_device, resolve_precision
from facegan.errors import UserError
from facegan.io import atomic_dir
from facegan.training import checkpoint, distributed, losses
from facegan.training.live import LiveLog
from facegan.training.phases import D_ADVERSARIAL, D_GRADIENT_PENALTY, D_R1, G_ADVERSARIAL, G_PATH_LENGTH
from facegan.training.progressive import Phase, Schedule

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model: str
    model_params: dict  # the model's section of params.yaml
    train: dict  # the `train` section
    seed: int
    resolution: int

    def identity(self) -> dict:
        """The params that define this run (what the checkpoint key hashes)."""
        return {
            "model": self.model,
            "params": self.model_params,
            "seed": self.seed,
            "resolution": self.resolution,
            "precision": self.train["precision"],
            "xflip": self.train["xflip"],
        }


# ------------------------------------------------------------------------------------------------
# Pieces the loop composes (each tested on its own)


def ema_beta(model_params: dict, batch: int, nimg: int) -> float:
    """Per-step EMA decay for a half-life of ema_kimg, ramped up to ema_rampup * images seen."""
    half_life = model_params["ema_kimg"] * 1000
    if half_life <= 0:
        return 0.0
    if model_params["ema_rampup"] > 0:
        half_life = min(half_life, nimg * model_params["ema_rampup"])
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(G_ema, G, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def lazy_adam(params, lr: float, betas, interval: int) -> torch.optim.Adam:
    """Adam for a network with a regulariser applied every `interval` steps (StyleGAN2 App. B)."""
    ratio = interval / (interval + 1) if interval > 1 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=tuple(b**ratio for b in betas), eps=1e-8)


def to_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool images down to `resolution` (the box filter PGGAN used for its reals)."""
    factor = images.shape[-1] // resolution
    return F.avg_pool2d(images, factor) if factor > 1 else images


def prepare_reals(images: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
    """Reals at the current level; during a fade-in, blended with the level below, upsampled
    (PGGAN sec. 2: 'we interpolate between two resolutions of the real images')."""
    images = to_resolution(images, resolution)
    if alpha < 1:
        low = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
        images = low.lerp(images, alpha)
    return images


class NonFiniteError(UserError):
    """A loss or a weight became NaN or inf; the message names the step and the last good checkpoint."""


def non_finite_error(what: str, step: int, ckpt_dir: Path) -> NonFiniteError:
    last = checkpoint.latest(ckpt_dir)
    where = f"last good checkpoint: {last}" if last else "no checkpoint written yet"
    return NonFiniteError(
        f"{what} is not finite at step {step} ({where}); lower the learning rate or use "
        f"train.precision=fp32, then re-run to resume from that checkpoint"
    )


def first_non_finite(named: dict[str, torch.nn.Module]) -> str | None:
    """Name of the first parameter or buffer holding a NaN/inf, or None."""
    for net_name, net in named.items():
        for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return f"{net_name}.{name}"
    return None


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def kernel_fallbacks() -> dict[str, str]:
    """Custom ops whose Triton kernel failed in this process and fell back to the reference path.

    Read through sys.modules: a model that never loads facegan.ops (DCGAN) has none, and its
    training does not depend on the ops' code."""
    ops = sys.modules.get("facegan.ops")
    return ops.fallbacks() if ops is not None else {}


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 65_537 + rank) % (2**62)


def step_draws(seed: int, step: int, batch: int, dataset_size: int, z_dim: int, xflip: bool) -> dict:
    """Every random input of one step for the global batch, from a (seed, step) generator."""
    gen = torch.Generator().manual_seed(step_seed(seed, step))
    draws = {
        "idx": torch.randint(dataset_size, (batch,), generator=gen),
        "flips": torch.rand(batch, generator=gen) < 0.5,
        "z": torch.randn(batch, z_dim, generator=gen),
        "gp_eps": torch.rand(batch, generator=gen),
    }
    if not xflip:
        draws["flips"] = None
    return draws


# ------------------------------------------------------------------------------------------------


def train(
    cfg: RunConfig,
    cache_dir: Path,
    run_dir: Path,
    ckpt_root: Path = checkpoint.CHECKPOINT_ROOT,
    stop_after_kimg: float | None = None,
    live_dir: Path | None = None,
) -> handoff.TrainedRun | None:
    """Train cfg.model on the face cache; return the stats written to run_dir/train_stats.json.

    `stop_after_kimg` ends the run early without finishing it (tests use it to simulate an
    interruption); the next call resumes from the checkpoint. `live_dir` receives dvclive logs
    (None: none). Under torchrun every rank calls this; only rank 0 writes. Returns the stats
    written to train_stats.json, or None when the run stopped before its budget.
    """
    mp, tp = cfg.model_params, cfg.train
    world = distributed.init_from_env(tp["device"])
    device = distributed.device_for(world, resolve_device(tp["device"]))
    dtype = resolve_precision(tp["precision"], device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if tp["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    cache = FaceCache(cache_dir)
    if cache.resolution != cfg.resolution:
        raise UserError(
            f"face cache is {cache.resolution}px but data.resolution={cfg.resolution}: run `dvc repro preprocess`"
        )
    spec = models.get_spec(cfg.model)
    G, D = models.build(cfg.model, mp["arch"], cfg.resolution)
    G, D = G.to(device).train(), D.to(device).train()
    world.broadcast_module(G), world.broadcast_module(D)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    final_level = int(np.log2(cfg.resolution)) - 2
    schedule = Schedule.for_model(cfg.model, mp, final_level, spec.progressive)
    for phase in schedule.phases:
        if phase.batch_size % world.size:
            raise UserError(
                f"batch size {phase.batch_size} of phase {phase.name} does not split over {world.size} "
                f"processes: make models.{cfg.model} batch sizes multiples of {world.size}"
            )
    reset_optimizer = spec.progressive and mp["progressive"]["reset_optimizer"]

    loss_cfg = mp["loss"]
    r1_every = loss_cfg["r1_every"] if loss_cfg["r1_gamma"] > 0 else 1
    pl_every = loss_cfg["pl_every"] if loss_cfg["pl_weight"] > 0 else 1
    opt_G = lazy_adam(G.parameters(), mp["lr_g"], mp["betas_g"], pl_every)
    opt_D = lazy_adam(D.parameters(), mp["lr_d"], mp["betas_d"], r1_every)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    path_length = (
        losses.PathLengthRegularizer(loss_cfg["pl_weight"], all_mean=world.all_mean)
        if loss_cfg["pl_weight"] > 0
        else None
    )
    if path_length is not None and not spec.style_based:
        raise UserError(f"models.{cfg.model}.loss.pl_weight needs a style-based generator: set it to 0")
    grid_z = torch.randn(tp["grid_size"] ** 2, G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))

    # Everything the run writes goes to its scratch folder first and moves into run_dir at the
    # end: DVC deletes run_dir before re-running the stage, the scratch folder survives that.
    ckpt_dir = checkpoint.checkpoint_dir(cfg.model, cfg.identity(), ckpt_root)
    step, nimg, phase_index, train_seconds, history, phase_stats = 0, 0, -1, 0.0, [], {}
    resume = checkpoint.latest(ckpt_dir)
    if resume is not None:
        state = checkpoint.load(resume)
        G.load_state_dict(state["G"]), D.load_state_dict(state["D"]), G_ema.load_state_dict(state["G_ema"])
        (
            opt_G.load_state_dict(state["opt_G"]),
            opt_D.load_state_dict(state["opt_D"]),
            scaler.load_state_dict(state["scaler"]),
        )
        set_rng_state(state["rng"])
        if path_length is not None:
            path_length.mean = state["pl_mean"].to(device)
        step, nimg, phase_index = int(state["step"]), int(state["nimg"]), int(state["phase_index"])
        train_seconds = float(state["train_seconds"])
        history, phase_stats = json.loads(state["history"]), json.loads(state["phase_stats"])
        if world.is_main:
            log.info(
                "resuming %s from %s at %.2f kimg (%s, alpha %.3f)",
                cfg.model,
                resume,
                nimg / 1000,
                state["phase"],
                float(state["alpha"]),
            )
    live = LiveLog(live_dir if world.is_main else None, resume=resume is not None)

    nets = {"G": G, "D": D, "G_ema": G_ema}
    state_now = {"phase": schedule.phase_at(nimg), "alpha": 1.0}

    def save_checkpoint() -> None:
        bad = first_non_finite(nets)
        if bad is not None:  # never write a checkpoint that cannot be resumed from
            raise non_finite_error(f"weight {bad}", step, ckpt_dir)
        phase = state_now["phase"]
        state = {
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(),
            "opt_D": opt_D.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "step": step,
            "nimg": nimg,
            "kimg": nimg / 1000,
            "phase_index": phase_index,
            "phase": phase.name,
            "level": phase.level,
            "alpha": state_now["alpha"],
            "train_seconds": train_seconds,
            "history": json.dumps(history),
            "phase_stats": json.dumps(phase_stats),
        }
        if path_length is not None:
            state["pl_mean"] = path_length.mean.detach().cpu()
        checkpoint.save(ckpt_dir / "last.pt", state)

    def write_grid(phase: Phase) -> None:
        with torch.no_grad():
            images = to_resolution(G_ema(grid_z.to(device)).float(), phase.resolution)
        save_grid(
            to_uint8(images),
            ckpt_dir / "samples" / f"res{phase.resolution:04d}_kimg{nimg / 1000:08.2f}.png",
            tp["grid_size"],
        )

    def crossed(before: int, after: int, every_kimg: float) -> bool:
        return int(after / (every_kimg * 1000)) > int(before / (every_kimg * 1000))

    def set_progress(level: int, alpha: float) -> None:
        if spec.progressive:
            for net in nets.values():
                net.set_progress(level, alpha)

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    stop_nimg = (
        schedule.total_nimg if stop_after_kimg is None else min(schedule.total_nimg, round(stop_after_kimg * 1000))
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(
        total=schedule.total_nimg / 1000,
        initial=nimg / 1000,
        desc=f"train {cfg.model}",
        unit="kimg",
        mininterval=10,
        disable=not world.is_main,
        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]",
    )
    term_names = (D_ADVERSARIAL, G_ADVERSARIAL, D_GRADIENT_PENALTY, D_R1, G_PATH_LENGTH)
    tick = {"n": 0, "seconds": 0.0, "nimg": 0, **{name: 0.0 for name in term_names}}
    if world.is_main:
        log.info(
            "%s schedule: %s",
            cfg.model,
            ", ".join(
                f"{p['phase']} {p['start_kimg']:g}-{p['end_kimg']:g} kimg (batch {p['batch_size']})"
                for p in schedule.summary()
            ),
        )
    while nimg < stop_nimg:
        t0 = time.perf_counter()
        phase = schedule.phase_at(nimg)
        if phase.index != phase_index:
            if phase_index >= 0 and phase.fade and reset_optimizer:
                opt_G.state.clear(), opt_D.state.clear()  # official PGGAN: fresh Adam moments per new block
            phase_index = phase.index
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        alpha = phase.alpha(nimg)
        state_now.update(phase=phase, alpha=alpha)
        set_progress(phase.level, alpha)
        batch = phase.batch_size

        draws = step_draws(cfg.seed, step, batch, len(cache), G.z_dim, tp["xflip"])
        torch.manual_seed(step_seed(cfg.seed, step, world.rank + 1))  # the models' own noise
        idx, z, gp_eps = world.shard(draws["idx"]), world.shard(draws["z"]).to(device), world.shard(draws["gp_eps"])
        flips = None if draws["flips"] is None else world.shard(draws["flips"])
        real = prepare_reals(cache.batch(idx.numpy(), device, flips), phase.resolution, alpha)
        terms = torch.zeros(5, device=device)  # loss_D, loss_G, gp, r1, pl (this rank)

        # D step: adversarial loss (+ drift, gradient penalty), then lazy R1
        D.requires_grad_(True), G.requires_grad_(False)
        with autocast:
            fake = to_resolution(G(z), phase.resolution)
            real_logits, fake_logits = D(real), D(fake.detach())
            loss_D = losses.d_adversarial(loss_cfg["type"], real_logits.float(), fake_logits.float())
            if loss_cfg["drift"] > 0:
                loss_D = loss_D + losses.drift_penalty(real_logits.float(), loss_cfg["drift"])
        if loss_cfg["gp_weight"] > 0:
            gp = losses.gradient_penalty(D, real, fake.float(), loss_cfg["gp_weight"], gp_eps)
            terms[2] = gp.detach()
            loss_D = loss_D + gp
        terms[0] = loss_D.detach()
        opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        if loss_cfg["r1_gamma"] > 0 and step % r1_every == 0:
            r1 = losses.r1_penalty(D, real, loss_cfg["r1_gamma"]) * r1_every
            scaler.scale(r1).backward()
            terms[3] = r1.detach()
        world.average_gradients(D)
        if mp["grad_clip"] > 0:
            scaler.unscale_(opt_D)
            torch.nn.utils.clip_grad_norm_(D.parameters(), mp["grad_clip"])
        scaler.step(opt_D)

        # G step: adversarial loss, then lazy path-length regularisation
        D.requires_grad_(False), G.requires_grad_(True)
        with autocast:
            loss_G = losses.g_adversarial(loss_cfg["type"], D(to_resolution(G(z), phase.resolution)).float())
        terms[1] = loss_G.detach()
        opt_G.zero_grad(set_to_none=True)
        scaler.scale(loss_G).backward()
        if path_length is not None and step % pl_every == 0:
            pl = path_length(G, z) * pl_every
            scaler.scale(pl).backward()
            terms[4] = pl.detach()
        world.average_gradients(G)
        if mp["grad_clip"] > 0:
            scaler.unscale_(opt_G)
            torch.nn.utils.clip_grad_norm_(G.parameters(), mp["grad_clip"])

        # one sync per step: the terms of all ranks, so every rank sees a NaN and stops together
        terms = world.all_mean(terms).cpu()
        if not torch.isfinite(terms).all():
            raise non_finite_error(term_names[int((~torch.isfinite(terms)).nonzero()[0])], step, ckpt_dir)
        scaler.step(opt_G)
        scaler.update()
        nimg_before, nimg = nimg, nimg + batch
        update_ema(G_ema, G, ema_beta(mp, batch, nimg))
        step += 1
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        stats = phase_stats.setdefault(phase.name, {"seconds": 0.0, "nimg": 0, "steps": 0, "batch_size": batch})
        stats["seconds"] += seconds
        stats["nimg"] += batch
        stats["steps"] += 1
        if device.type == "cuda":
            stats["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        for i, key in enumerate(term_names):
            tick[key] += float(terms[i])
        tick["n"] += 1
        tick["seconds"] += seconds
        tick["nimg"] += batch
        bar.update(batch / 1000)

        next_phase = schedule.phase_at(nimg)
        level_done = nimg >= schedule.total_nimg or next_phase.level != phase.level
        if crossed(nimg_before, nimg, tp["log_kimg"]) or nimg >= stop_nimg or level_done:
            n = max(tick["n"], 1)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            row = {
                "kimg": round(nimg / 1000, 3),
                "step": step,
                "train_seconds": round(train_seconds, 2),
                "losses": {k: tick[k] / n for k in term_names},
                "img_per_s": tick["nimg"] / max(tick["seconds"], 1e-9),
                "phase": phase.name,
                "level": phase.level,
                "resolution": phase.resolution,
                "alpha": round(alpha, 4),
                "lr_g": opt_G.param_groups[0]["lr"],
                "lr_d": opt_D.param_groups[0]["lr"],
                "peak_memory_gib": None if peak is None else peak / 2**30,
            }
            history.append(row)
            live.log(
                len(history) - 1,
                {**{k: v for k, v in row.items() if k not in ("phase", "step", "losses")}, **row["losses"]},
            )
            tick = {k: 0 if k in ("n", "nimg") else 0.0 for k in tick}
            bad = first_non_finite(nets)
            if bad is not None:
                raise non_finite_error(f"weight {bad}", step, ckpt_dir)
            if world.is_main:
                bar.set_postfix(
                    phase=phase.name,
                    alpha=f"{alpha:.2f}",
                    loss_D=f"{row['losses'][D_ADVERSARIAL]:.3f}",
                    loss_G=f"{row['losses'][G_ADVERSARIAL]:.3f}",
                )
        if world.is_main:
            if crossed(nimg_before, nimg, tp["sample_kimg"]) or level_done:
                write_grid(phase)
            # a snapshot at the end of every resolution too: FID per resolution for growing models
            if crossed(nimg_before, nimg, tp["snapshot_kimg"]) or level_done:
                checkpoint.save(
                    ckpt_dir / "snapshots" / f"kimg{nimg / 1000:08.2f}.pt",
                    {"G_ema": G_ema.state_dict(), "kimg": nimg / 1000, "level": phase.level, "alpha": alpha},
                )
            if crossed(nimg_before, nimg, tp["checkpoint_kimg"]) or nimg >= stop_nimg:
                save_checkpoint()
    bar.close()
    world.barrier()
    if nimg < schedule.total_nimg:
        live.close()
        return None

    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    final = schedule.phases[-1]
    stats = handoff.TrainedRun(
        status="trained",
        model=cfg.model,
        paper=spec.paper,
        resolution=cfg.resolution,
        resolutions_reached=sorted({p.resolution for p in schedule.phases}),
        kimg=round(nimg / 1000, 3),
        steps=step,
        batch_size=final.batch_size,
        world_size=world.size,
        train_seconds=round(train_seconds, 2),
        img_per_s=round(nimg / max(train_seconds, 1e-9), 2),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=str(dtype).replace("torch.", ""),
        peak_memory_bytes=peak_mem,
        params_G=models.count_params(G),
        params_D=models.count_params(D),
        history=[handoff.HistoryRow(**row) for row in history],
        schedule=[handoff.ScheduleEntry(**entry) for entry in schedule.summary()],
        phases={
            name: handoff.PhaseStats(
                **p,
                img_per_s=round(p["nimg"] / max(p["seconds"], 1e-9), 2),
                peak_memory_bytes=p.get("peak_memory_bytes"),
            )
            for name, p in (
                (n, {k: v for k, v in p.items() if k != "peak_memory_bytes"}) for n, p in phase_stats.items()
            )
        },
        dvclive=live.enabled,
        kernel_fallbacks=kernel_fallbacks(),
    )
    live.summary(
        {
            "kimg": stats.kimg,
            "img_per_s": stats.img_per_s,
            "train_seconds": stats.train_seconds,
            "peak_memory_gib": None if peak_mem is None else peak_mem / 2**30,
        }
    )
    live.close()
    if not world.is_main:
        distributed.shutdown(world)
        return stats
    checkpoint.save(
        ckpt_dir / "G_ema.pt", {"G_ema": G_ema.state_dict(), "kimg": nimg / 1000, "level": final.level, "alpha": 1.0}
    )
    stats.write(ckpt_dir / "train_stats.json")
    with atomic_dir(run_dir) as out:
        for name in ("samples", "snapshots", "G_ema.pt", "train_stats.json"):
            shutil.move(str(ckpt_dir / name), str(out / name))
    shutil.rmtree(ckpt_dir)  # the finished run lives in run_dir (and DVC's cache) now
    distributed.shutdown(world)
    return stats
