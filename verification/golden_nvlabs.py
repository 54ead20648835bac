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
Recorded (verification/golden_io.record): every phase's loss terms per step (from training_stats reports)
and, at the steps the test compares one at a time, the run's whole state before and after the step
(weights, G_ema, Adam's moments, the path-length target, ADA's p and its sign tally, read from the official
objects by `OfficialRun.state`) and every phase's gradient.

    python -m verification.regenerate --only stylegan2 stylegan3_t stylegan3_r
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import DrawSpec, step_draws, step_seed
from tests.helpers import study_model
from verification import golden_io
from verification.golden_ada import BGC, ada_block
from verification.nvlabs_networks import official_networks
from verification.official import import_nvlabs

REPO = "NVlabs+stylegan3"
BATCH, RESOLUTION, SEED = 8, 16, 5
# 8 channels everywhere: small enough to store the whole state of every compared step (tests/golden/ < 5 MB)
SG2_ARCH = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=8)
SG3_ARCH = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=8, num_layers=4, margin=4)
# p moves 0.032 per update: visible in 17 steps
SIGNS = "Loss/signs/real"  # the statistic ADA adapts p by
AUGMENT = dict(mode="ada", pipe="bgc", p=0.2, target=0.6, interval=4, kimg=1.0)


@dataclass(frozen=True)
class Golden:
    """One golden file: its model and params, how many official steps it runs, the steps compared one at a
    time from the official state (every kind of step the run has) and the length of the free-running check."""

    model: str
    params: dict
    steps: int
    forced: list[int]
    free_steps: int


def configurations() -> dict[str, Golden]:
    """StyleGAN2 over 17 steps (Greg at 0, 4, 8, 12, 16, Dreg at 0 and 16; ADA's p moves after steps 3, 7, ...):
    compared at 0 (every phase, the EMA's ramp-up from 0 images), 1 and 2 (main phases on Adam moments), 3 (p's
    update), 4 (Greg on a path-length target, the new p) and 16 (Dreg and Greg after 15 steps of moments: the
    lazy Adam correction of both). StyleGAN3-T over 5 (p's update at 3, the new p at 4), StyleGAN3-R over 6 with
    D's blur from 10 px at step 0 through 5 and 2.5 px at steps 2 and 3 to 0 at step 4."""
    sg2 = study_model("stylegan2", batch_size=BATCH, kimg=17 * BATCH / 1000, arch=SG2_ARCH, augment=AUGMENT)
    sg3 = dict(batch_size=BATCH, augment=AUGMENT, arch=dict(SG3_ARCH, magnitude_ema_beta=0.5 ** (BATCH / 20_000)))
    sg3_t = study_model("stylegan3", kimg=5 * BATCH / 1000, **sg3)
    blur = {"blur_init_sigma": 10.0, "blur_fade_kimg": 4 * BATCH / 1000}  # train.py's config r: 10 px, fading
    sg3_r = study_model("stylegan3", kimg=6 * BATCH / 1000, loss=blur, **dict(sg3, arch=dict(sg3["arch"], config="r")))
    return {
        "stylegan2": Golden("stylegan2", sg2, 17, [0, 1, 2, 3, 4, 16], 3),
        "stylegan3_t": Golden("stylegan3", sg3_t, 5, [0, 1, 3, 4], 2),
        "stylegan3_r": Golden("stylegan3", sg3_r, 6, [0, 2, 3, 4], 2),
    }


NAMES = tuple(configurations())


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


class OfficialRun:
    """NVlabs' training step on CPU, holding the project's initial weights: `step(k)` runs step k as
    training_loop.py does, `state()` and `load()` read and write its whole state in the project's terms."""

    def __init__(self, model: str, params: dict, modules):
        loss_module, augment, self.training_stats, misc = modules
        self.model, self.params = model, params
        self.faces = golden_io.synthetic_faces(16, RESOLUTION)
        torch.manual_seed(SEED)
        G, D = models.build(model, params["arch"], RESOLUTION)
        self.init = {"G": golden_io.state_dict(G), "D": golden_io.state_dict(D)}
        reports = {}
        self.G, self.D = official_networks(model, G, D, params["arch"], RESOLUTION, reports)
        self.maps = {"G": golden_io.NameMap(reports["G"].pairs, G), "D": golden_io.NameMap(reports["D"].pairs, D)}
        self.order = {net: our_order(ours, reports[net].pairs) for net, ours in (("G", G), ("D", D))}
        self.G.train().requires_grad_(False), self.D.train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()

        self.pipe = augment.AugmentPipe(**BGC).train().requires_grad_(False)
        self.pipe.p.copy_(torch.as_tensor(params["augment"]["p"]))
        self.ada_stats = self.training_stats.Collector(regex=SIGNS)
        lp = params["loss"]
        self.loss = loss_module.StyleGAN2Loss(
            device=torch.device("cpu"),
            G=self.G,
            D=self.D,
            augment_pipe=self.pipe,
            r1_gamma=lp["r1_gamma"],
            style_mixing_prob=lp["style_mixing_prob"],
            pl_weight=lp["pl_weight"],
            pl_no_weight_grad=model == "stylegan2",  # train.py --cfg=stylegan2
            blur_init_sigma=lp["blur_init_sigma"],
            blur_fade_kimg=lp["blur_fade_kimg"],
        )
        self.phases = official_phases(params, self.G, self.D)
        self.ours = build_phases(LossSettings.model_validate(lp))
        # accumulate_gradients runs Gboth as Gmain when pl_weight is 0 (loss.py:68): our name for that phase
        for phase in self.phases:
            phase["ours"] = "Gmain" if phase["name"] == "Gboth" and lp["pl_weight"] == 0 else phase["name"]
        assert [p["ours"] for p in self.phases] == [p.name for p in self.ours]
        self.ada_code, _, _ = ada_block()
        ada = params["augment"]
        self.namespace = {"np": np, "misc": misc, "device": torch.device("cpu"), "augment_pipe": self.pipe}
        self.namespace.update(ada_stats=self.ada_stats, batch_size=BATCH, ada_interval=ada["interval"])
        self.namespace.update(ada_target=ada["target"], ada_kimg=ada["kimg"])
        self.misc = misc

    def optimiser(self, net: str) -> torch.optim.Optimizer:
        return next(p["opt"] for p in self.phases if p["name"][0] == net)

    def state(self) -> golden_io.LoopState:
        pending = self.training_stats._counters.get(SIGNS, {})  # reported since the collector's last update
        moments = sum(pending.values(), torch.zeros(3, dtype=torch.float64))
        return {
            "G": self.maps["G"].to_ours(self.G),
            "D": self.maps["D"].to_ours(self.D),
            "G_ema": self.maps["G"].to_ours(self.G_ema),
            "adam": {net: self.maps[net].adam_to_ours(self.optimiser(net), getattr(self, net)) for net in "GD"},
            "pl_mean": self.loss.pl_mean.detach().clone(),
            "augment_p": self.pipe.p.detach().clone(),
            "real_signs": torch.stack([moments[1], moments[0]]),  # ours: (sum, count); official (count, sum, sum sq)
        }

    def load(self, state: golden_io.LoopState) -> None:
        for net, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            self.maps[net[0]].load_theirs(module, state[net])
        for net in "GD":
            self.maps[net].load_adam_theirs(self.optimiser(net), getattr(self, net), state["adam"][net])
        self.loss.pl_mean.copy_(state["pl_mean"])
        self.pipe.p.copy_(state["augment_p"])
        self.ada_stats.update()  # nothing pending; then the tally's signs again, as +-1s
        total, count = (int(v) for v in state["real_signs"].tolist())
        signs = torch.cat([torch.ones((count + total) // 2), -torch.ones((count - total) // 2)])
        self.training_stats.report(SIGNS, signs)

    def step(self, batch_idx: int) -> dict:
        """training_loop.py:274-318 for one batch: every phase due, the G EMA, cur_nimg, the ADA block."""
        draw_spec = DrawSpec(self.params["arch"]["z_dim"], self.params["xflip"], self.params["loss"]["latents"])
        draws = step_draws(SEED, batch_idx, BATCH, len(self.faces), self.ours, draw_spec)
        torch.manual_seed(step_seed(SEED, batch_idx, 1))  # the project loop's global seed of this step (rank 0)
        real_img = golden_io.reals(self.faces, draws.idx, draws.flips)
        cur_nimg, empty_c = batch_idx * BATCH, torch.zeros(BATCH, 0)
        recorder = Recorder(self.training_stats)
        terms, gradients = {}, {}
        try:
            for phase in self.phases:
                if batch_idx % phase["interval"] != 0:
                    continue
                recorder.terms = {}
                phase["opt"].zero_grad(set_to_none=True)
                phase["module"].requires_grad_(True)
                gen_z = draws.z[phase["ours"]]
                self.loss.accumulate_gradients(
                    phase["name"], real_img, empty_c, gen_z, empty_c, phase["interval"], cur_nimg
                )
                phase["module"].requires_grad_(False)
                params_with_grad = [p for p in phase["module"].parameters() if p.grad is not None]
                flat = torch.cat([p.grad.flatten() for p in params_with_grad])
                self.misc.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                for p, g in zip(params_with_grad, flat.split([p.numel() for p in params_with_grad])):
                    p.grad = g.reshape(p.shape)
                gradients[phase["ours"]] = golden_io.gradient_record(phase["module"], self.order[phase["ours"][0]])
                phase["opt"].step()
                terms[phase["ours"]] = dict(recorder.terms)
        finally:
            self.training_stats.report = recorder.report
        params = self.params
        ema_nimg = params["ema_kimg"] * 1000
        if params["ema_rampup"] > 0:
            ema_nimg = min(ema_nimg, cur_nimg * params["ema_rampup"])
        ema_beta = 0.5 ** (BATCH / max(ema_nimg, 1e-8))  # training_loop.py:300-304
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        self.namespace["batch_idx"] = batch_idx + 1
        exec(self.ada_code, self.namespace)  # noqa: S102 - training_loop.py's own ADA block
        return {"terms": terms, "gradients": gradients}


def write(name: str, run: OfficialRun, golden: Golden) -> None:
    trajectory = golden_io.record(run, golden.steps, golden.forced, golden.free_steps)
    golden_io.save(
        name,
        REPO,
        ["training/loss.py (StyleGAN2Loss)", "training/training_loop.py:195-211, 274-318 (phases, EMA, ADA)"],
        golden.params,
        model=golden.model,
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(run.faces),
        init=run.init,
        **trajectory,
    )


def our_order(ours, pairs) -> list[str]:
    """The official names of our parameters, in our registration order (how the tests flatten our gradients)."""
    official_of = {our_name: their_name for their_name, our_name in pairs if our_name is not None}
    return [official_of[name] for name, _ in ours.named_parameters()]


def official_modules():
    """NVlabs' loss, augment pipe, training_stats and misc, with the gradfix ops on as training_loop.py:132-133."""
    modules = import_nvlabs(REPO, "training.loss", "training.augment", "torch_utils.training_stats", "torch_utils.misc")
    grid_sample_gradfix, conv2d_gradfix = import_nvlabs(
        REPO, "torch_utils.ops.grid_sample_gradfix", "torch_utils.ops.conv2d_gradfix"
    )
    grid_sample_gradfix.enabled = conv2d_gradfix.enabled = True
    return modules


def official_run(name: str) -> OfficialRun:
    golden = configurations()[name]
    return OfficialRun(golden.model, golden.params, official_modules())


def main(only: list[str] | None = None) -> None:
    modules = official_modules()
    for name, golden in configurations().items():
        if only is None or name in only:
            run = OfficialRun(golden.model, golden.params, modules)
            write(name, run, golden)


if __name__ == "__main__":
    main()
