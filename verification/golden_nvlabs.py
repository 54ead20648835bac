"""StyleGAN2 and StyleGAN3 (-T, -R) against NVlabs' stylegan3 repository, whole training steps.

The official training loop (training/training_loop.py) cannot be called piecewise, so this script runs
its step the way that loop does - for each phase (Gmain, Greg every 4 for StyleGAN2, Dmain, Dreg every
16, each with its own lazily rescaled Adam: training_loop.py:195-211): zero_grad, requires_grad,
`loss.accumulate_gradients(phase, ..., gain=interval, cur_nimg)` of the official StyleGAN2Loss
(training/loss.py), the gradients' nan_to_num, the optimiser's step; then the G EMA (training_loop.py:299-308),
cur_nimg and batch_idx, and the loop's own ADA block, run from the file (training_loop.py:315-318), with
the official AugmentPipe (training/augment.py) and the training_stats Collector it reads. The networks
are the official ones holding the project's initial weights (verification/nvlabs_networks.py).

Every random input is the project's: the step's reals (faces, indices, flips), its latent batch per
phase (facegan.training.step.step_draws) and the global torch seed the project's loop sets at each
step's start, from which both sides draw style mixing, noise, path-length noise and augmentation.
Recorded: every phase's loss terms per step (from training_stats reports), the first gradient of each
phase, ADA's p after every step, and the final G, D and G_ema.

    python -m verification.golden_nvlabs     # writes tests/golden/stylegan2.pt, stylegan3_t.pt, stylegan3_r.pt
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import step_draws, step_seed
from tests.helpers import study_model
from verification import golden_io
from verification.golden_ada import BGC, ada_block
from verification.nvlabs_networks import copy_into_official, official_networks
from verification.official import import_nvlabs

REPO = "NVlabs+stylegan3"
BATCH, RESOLUTION, SEED = 8, 16, 5
SG2_ARCH = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
SG3_ARCH = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=16, num_layers=4, margin=4)
# p moves 0.032 per update: visible in 17 steps
AUGMENT = dict(mode="ada", pipe="bgc", p=0.2, target=0.6, interval=4, kimg=1.0)


def configurations() -> dict[str, tuple[str, dict, int]]:
    """name -> (model, params, steps): StyleGAN2 over 17 steps (Greg at 0, 4, 8, 12, 16, Dreg at 0 and 16: the
    lazy Adam correction of both), StyleGAN3-T over 5, StyleGAN3-R over 6 with the blur fading to 0 at step 4."""
    sg2 = study_model("stylegan2", batch_size=BATCH, kimg=17 * BATCH / 1000, arch=SG2_ARCH, augment=AUGMENT)
    sg3 = dict(batch_size=BATCH, augment=AUGMENT, arch=dict(SG3_ARCH, magnitude_ema_beta=0.5 ** (BATCH / 20_000)))
    sg3_t = study_model("stylegan3", kimg=5 * BATCH / 1000, **sg3)
    blur = {"blur_init_sigma": 10.0, "blur_fade_kimg": 4 * BATCH / 1000}  # train.py's config r: 10 px, fading
    sg3_r = study_model("stylegan3", kimg=6 * BATCH / 1000, loss=blur, **dict(sg3, arch=dict(sg3["arch"], config="r")))
    return {
        "stylegan2": ("stylegan2", sg2, 17),
        "stylegan3_t": ("stylegan3", sg3_t, 5),
        "stylegan3_r": ("stylegan3", sg3_r, 6),
    }


class Recorder:
    """training_stats.report, recording the means of the loss terms a phase reports (then reporting as usual)."""

    NAMES = {
        "Loss/G/loss": "G/adversarial",
        "Loss/G/reg": "G/path_length",
        "Loss/D/loss": "D/adversarial",
        "Loss/D/reg": "D/r1",
    }

    def __init__(self, training_stats):
        self.report, self.terms = training_stats.report, {}
        training_stats.report = self

    def __call__(self, name, value):
        if name in self.NAMES:
            self.terms[self.NAMES[name]] = value.detach().float().mean().clone()
        return self.report(name, value)


def official_phases(params: dict, G, D) -> list[dict]:
    """training_loop.py:195-211: per network, Adam(lr * c, betas ** c) with c = interval / (interval + 1) when it
    has a lazy regulariser, and its main (and reg) phases; G first, then D."""
    loss, phases = params["loss"], []
    intervals = {"G": loss["pl_every"] if loss["pl_weight"] > 0 else None, "D": loss["r1_every"]}
    for name, module, lr, betas in (
        ("G", G, params["lr_g"], params["betas_g"]),
        ("D", D, params["lr_d"], params["betas_d"]),
    ):
        interval = intervals[name]
        if interval is None:
            opt = torch.optim.Adam(module.parameters(), lr=lr, betas=betas, eps=1e-8)
            phases.append({"name": name + "both", "module": module, "opt": opt, "interval": 1})
        else:
            ratio = interval / (interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=[b**ratio for b in betas], eps=1e-8)
            phases.append({"name": name + "main", "module": module, "opt": opt, "interval": 1})
            phases.append({"name": name + "reg", "module": module, "opt": opt, "interval": interval})
    return phases


def run(name: str, model: str, params: dict, steps: int, modules) -> None:
    loss_module, augment, training_stats, misc = modules
    faces = golden_io.synthetic_faces(16, RESOLUTION)
    torch.manual_seed(SEED)
    G, D = models.build(model, params["arch"], RESOLUTION)
    init = {"G": golden_io.state_dict(G), "D": golden_io.state_dict(D)}
    reports = {}
    off_G, off_D = official_networks(model, G, D, params["arch"], RESOLUTION, reports)
    order = {net: our_order(ours, reports[net].pairs) for net, ours in (("G", G), ("D", D))}
    off_G.train().requires_grad_(False), off_D.train().requires_grad_(False)
    G_ema = copy.deepcopy(off_G).eval()

    pipe = augment.AugmentPipe(**BGC).train().requires_grad_(False)
    pipe.p.copy_(torch.as_tensor(params["augment"]["p"]))
    ada_stats = training_stats.Collector(regex="Loss/signs/real")
    lp = params["loss"]
    loss = loss_module.StyleGAN2Loss(
        device=torch.device("cpu"),
        G=off_G,
        D=off_D,
        augment_pipe=pipe,
        r1_gamma=lp["r1_gamma"],
        style_mixing_prob=lp["style_mixing_prob"],
        pl_weight=lp["pl_weight"],
        pl_no_weight_grad=model == "stylegan2",  # train.py --cfg=stylegan2
        blur_init_sigma=lp["blur_init_sigma"],
        blur_fade_kimg=lp["blur_fade_kimg"],
    )
    phases = official_phases(params, off_G, off_D)
    ours = build_phases(LossSettings.model_validate(lp))
    # accumulate_gradients runs Gboth as Gmain when pl_weight is 0 (loss.py:68): our name for that phase
    for phase in phases:
        phase["ours"] = "Gmain" if phase["name"] == "Gboth" and lp["pl_weight"] == 0 else phase["name"]
    assert [p["ours"] for p in phases] == [p.name for p in ours], ([p["name"] for p in phases], [p.name for p in ours])
    code, first, last = ada_block()
    ada = params["augment"]
    namespace = {"np": np, "misc": misc, "device": torch.device("cpu"), "augment_pipe": pipe, "ada_stats": ada_stats}
    namespace.update(batch_size=BATCH, ada_interval=ada["interval"], ada_target=ada["target"], ada_kimg=ada["kimg"])
    recorder = Recorder(training_stats)
    empty_c = torch.zeros(BATCH, 0)
    ema_nimg_full = params["ema_kimg"] * 1000
    records, gradients, p_after, cur_nimg = [], {}, [], 0
    for batch_idx in range(steps):
        draws = step_draws(SEED, batch_idx, BATCH, len(faces), SG2_ARCH["z_dim"], params["xflip"], ours, lp["latents"])
        torch.manual_seed(step_seed(SEED, batch_idx, 1))  # the project loop's global seed of this step (rank 0)
        real_img = golden_io.reals(faces, draws.idx, draws.flips)
        step_terms = {}
        for phase in phases:  # training_loop.py:274-297
            if batch_idx % phase["interval"] != 0:
                continue
            recorder.terms = {}
            phase["opt"].zero_grad(set_to_none=True)
            phase["module"].requires_grad_(True)
            gen_z = draws.z[phase["ours"]]
            loss.accumulate_gradients(phase["name"], real_img, empty_c, gen_z, empty_c, phase["interval"], cur_nimg)
            phase["module"].requires_grad_(False)
            params_with_grad = [p for p in phase["module"].parameters() if p.grad is not None]
            flat = torch.cat([p.grad.flatten() for p in params_with_grad])
            misc.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
            for p, g in zip(params_with_grad, flat.split([p.numel() for p in params_with_grad])):
                p.grad = g.reshape(p.shape)
            if phase["ours"] not in gradients:
                gradients[phase["ours"]] = golden_io.gradient_record(phase["module"], order[phase["ours"][0]])
            phase["opt"].step()
            step_terms[phase["ours"]] = dict(recorder.terms)
        ema_nimg = min(ema_nimg_full, cur_nimg * params["ema_rampup"]) if params["ema_rampup"] > 0 else ema_nimg_full
        ema_beta = 0.5 ** (BATCH / max(ema_nimg, 1e-8))  # training_loop.py:300-304
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), off_G.parameters()):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(G_ema.buffers(), off_G.buffers()):
                b_ema.copy_(b)
        cur_nimg += BATCH
        namespace["batch_idx"] = batch_idx + 1
        exec(code, namespace)  # noqa: S102 - training_loop.py's own ADA block
        p_after.append(float(pipe.p))
        records.append(step_terms)
        print(
            f"{name} step {batch_idx}: "
            + ", ".join(f"{k} {float(v):.5f}" for t in step_terms.values() for k, v in t.items())
        )
    training_stats.report = recorder.report

    # the official weights back in the project's names: copy them into fresh networks of ours, by the same map
    final_G, final_D = models.build(model, params["arch"], RESOLUTION)
    final_ema, _ = models.build(model, params["arch"], RESOLUTION)
    reverse(model, final_G, final_D, off_G, off_D)
    reverse(model, final_ema, final_D, G_ema, off_D)
    golden_io.save(
        name,
        REPO,
        ["training/loss.py (StyleGAN2Loss)", "training/training_loop.py:195-211, 274-318 (phases, EMA, ADA)"],
        "losses rel 2e-5; gradients rel 1e-4 of the norm; weights atol 2e-5 (Adam divides by sqrt(v)); p exact",
        params,
        model=model,
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(faces),
        init=init,
        steps=records,
        gradients=gradients,
        augment_p=torch.tensor(p_after, dtype=torch.float64),
        final={
            "G": golden_io.state_dict(final_G),
            "D": golden_io.state_dict(final_D),
            "G_ema": golden_io.state_dict(final_ema),
        },
    )


def our_order(ours, pairs) -> list[str]:
    """The official names of our parameters, in our registration order (how the tests flatten our gradients)."""
    official_of = {our_name: their_name for their_name, our_name in pairs if our_name is not None}
    return [official_of[name] for name, _ in ours.named_parameters()]


def reverse(model: str, our_G, our_D, off_G, off_D) -> None:
    """Copy the official networks' tensors into ours: the forward map applied to `ours <- theirs`."""
    probe_G, probe_D = copy.deepcopy(our_G), copy.deepcopy(our_D)
    reports = copy_into_official(model, probe_G, probe_D, copy.deepcopy(off_G), copy.deepcopy(off_D))
    for ours, theirs, report in ((our_G, off_G, reports["G"]), (our_D, off_D, reports["D"])):
        mine, official = dict(ours.state_dict()), dict(theirs.state_dict())
        with torch.no_grad():
            for their_name, our_name in report.pairs:
                if our_name is None:  # an official constant its forward never reads
                    continue
                mine[our_name].copy_(official[their_name].reshape(mine[our_name].shape))


def main() -> None:
    modules = import_nvlabs(REPO, "training.loss", "training.augment", "torch_utils.training_stats", "torch_utils.misc")
    grid_sample_gradfix, conv2d_gradfix = import_nvlabs(
        REPO, "torch_utils.ops.grid_sample_gradfix", "torch_utils.ops.conv2d_gradfix"
    )
    grid_sample_gradfix.enabled = conv2d_gradfix.enabled = True  # training_loop.py:132-133
    for name, (model, params, steps) in configurations().items():
        run(name, model, params, steps, modules)


if __name__ == "__main__":
    main()
