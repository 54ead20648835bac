"""R3GAN against brownvc/R3GAN: its networks, its loss (R3GAN/Trainer.py through training/loss.py), its
augmentation pipe and the body of its training loop (training/training_loop.py), whole steps.

The official networks (training/networks.py, which wraps R3GAN/Networks.py) get the project's weights,
tensor by tensor in registration order. Each step then does what the official iteration does, with the
project's draws handed in: the D phase on its reals and latents, then the G phase on a second batch of
reals and its own latents, each through R3GANLoss.accumulate_gradients with the official AugmentPipe of
`train.py --aug=1`; lr, Adam's beta2, gamma, the EMA length and the augmentation p from the official
cosine_decay_with_warmup; the G EMA as the loop updates it. The schedule runs over a tiny decay_kimg so
that every value moves within the few steps. It also records the official schedules of the FFHQ presets
at three points of training, and G's and D's outputs at the initial weights.

    python -m verification.regenerate --only r3gan
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import DrawSpec, step_draws, step_seed
from tests.helpers import study_model
from verification import golden_io
from verification.official import import_nvlabs

REPO = "brownvc+R3GAN"
STEPS, BATCH, RESOLUTION, SEED = 4, 8, 16, 5
ARCH = {  # widths 16, 8, 4 at 4, 8, 16 px (1x1 transitions between them), cardinalities 4, 2, 1
    "z_dim": 8,
    "channel_base": 64,
    "channel_max": 16,
    "group_channels": 8,
    "blocks_per_stage": 1,  # one block a stage: small enough to store the whole state of every compared step
    "expansion": 2,
    "bf16_stages": 0,
}
COSINE = {"decay_kimg": 0.032, "lr_final": 5e-5, "beta2_final": 0.99, "gamma_final": 0.2}  # 4 steps of 8 images
AUGMENT = {"mode": "cosine", "pipe": "r3gan", "p": 0.6, "target": 0.6, "interval": 4, "kimg": 500.0}
AUGMENT_KWARGS = dict(  # official train.py --aug=1
    xflip=1,
    rotate90=1,
    xint=1,
    scale=1,
    rotate=1,
    aniso=1,
    xfrac=1,
    brightness=0.5,
    contrast=0.5,
    lumaflip=0.5,
    hue=0.5,
    saturation=0.5,
    cutout=1,
)
# The FFHQ presets of train.py (lr, beta2, gamma, ema_nimg, aug p: base -> final over decay_nimg 2e7)
PRESETS = {
    "FFHQ-64": {"lr": (2e-4, 5e-5), "beta2": (0.9, 0.99), "gamma": (2, 0.2), "ema": (0, 5e5), "aug": (0, 0.3)},
    "FFHQ-256": {"lr": (2e-4, 5e-5), "beta2": (0.9, 0.99), "gamma": (150, 15), "ema": (0, 5e5), "aug": (0, 0.3)},
}
SCHEDULE_POINTS = (0, 5_000_000, 15_000_000, 25_000_000)  # images seen; the last is past the decay


def perturb_zeros(module: torch.nn.Module, generator: torch.Generator) -> None:
    """R3GAN starts every residual branch's last conv and every bias at 0, which would hide them from the
    comparison: give them small values (in both copies, through the stored initial weights)."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)


def copy_into(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """The project's tensors into the official network, in registration order, shapes checked."""
    mine, official = list(ours.state_dict().items()), list(theirs.state_dict().items())
    assert len(mine) == len(official), (len(mine), len(official))
    mapped = {}
    for (name, value), (their_name, their_value) in zip(mine, official):
        assert value.shape == their_value.shape, (name, their_name)
        mapped[their_name] = value.clone()
    theirs.load_state_dict(mapped, strict=True)


def official_networks(networks, arch: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    from facegan.settings import R3ganArch
    from models.r3gan import stage_widths

    stages = stage_widths(RESOLUTION, R3ganArch.model_validate(arch))
    widths, cardinalities = [w for w, _ in stages], [c for _, c in stages]
    blocks = [arch["blocks_per_stage"]] * len(stages)
    common = dict(c_dim=0, img_resolution=RESOLUTION, FP16Stages=[], ExpansionFactor=arch["expansion"])
    G = networks.Generator(
        NoiseDimension=arch["z_dim"],
        WidthPerStage=widths,
        CardinalityPerStage=cardinalities,
        BlocksPerStage=blocks,
        **common,
    )
    D = networks.Discriminator(
        WidthPerStage=widths[::-1], CardinalityPerStage=cardinalities[::-1], BlocksPerStage=blocks[::-1], **common
    )
    return G.train().requires_grad_(False), D.train().requires_grad_(False)


def official_schedules(cosine_decay_with_warmup) -> dict:
    table = {}
    for preset, values in PRESETS.items():
        table[preset] = [
            {
                "nimg": nimg,
                **{
                    key: cosine_decay_with_warmup(nimg, base_value=start, total_nimg=2e7, final_value=end)
                    for key, (start, end) in values.items()
                },
            }
            for nimg in SCHEDULE_POINTS
        ]
    return table


def official_schedule_values(schedule, nimg: int, params: dict) -> dict[str, float]:
    """The official loop's scheduled values at the top of an iteration (training_loop.py:307-311)."""
    total_nimg = COSINE["decay_kimg"] * 1000

    def at(start: float, end: float) -> float:
        return schedule(nimg, base_value=start, total_nimg=total_nimg, final_value=end)

    return {
        "lr": at(params["lr_g"], COSINE["lr_final"]),
        "beta2": at(0.9, COSINE["beta2_final"]),
        "gamma": at(2.0, COSINE["gamma_final"]),
        "ema_nimg": at(0, params["ema_kimg"] * 1000),
        "aug_p": at(0, AUGMENT["p"]),
    }


def official_phase(name: str, module, opt, loss, real_img, gen_z, values: dict) -> dict[str, torch.Tensor]:
    """One phase of the official iteration up to its optimizer step (training_loop.py:317-332): gradients
    through R3GANLoss's trainer, then lr and betas from the schedule. Returns our names for its loss terms."""
    opt.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    gamma = values["gamma"]
    if name == "D":
        adv, _, r1, r2 = loss.trainer.AccumulateDiscriminatorGradients(
            gen_z, real_img, None, gamma, 1, loss.preprocessor
        )
        terms = {"D/adversarial": adv.mean(), "D/r1": gamma / 2 * r1.mean(), "D/r2": gamma / 2 * r2.mean()}
    else:
        adv, _ = loss.trainer.AccumulateGeneratorGradients(gen_z, real_img, None, 1, loss.preprocessor)
        terms = {"G/adversarial": adv.mean()}
    module.requires_grad_(False)
    for group in opt.param_groups:
        group["lr"] = values["lr"]
        group["betas"] = (0.0, values["beta2"])
    return terms


def official_params() -> dict:
    return study_model(
        "r3gan",
        batch_size=BATCH,
        kimg=STEPS * BATCH / 1000,
        lr_g=2e-4,
        lr_d=2e-4,
        betas_g=[0.0, 0.9],
        betas_d=[0.0, 0.9],
        ema_kimg=0.016,
        xflip=True,
        arch=ARCH,
        cosine=COSINE,
        augment=AUGMENT,
        loss={"r1_gamma": 2.0},
    )


class OfficialRun:
    """brownvc/R3GAN's iteration on CPU holding the project's initial weights: `step(k)` runs iteration k,
    `state()` and `load()` read and write its whole state in the project's terms (verification/golden_io.py)."""

    def __init__(self):
        networks, loss_module, augment, training_loop = import_nvlabs(
            REPO, "training.networks", "training.loss", "training.augment", "training.training_loop"
        )
        self.schedule = training_loop.cosine_decay_with_warmup
        self.params = params = official_params()
        self.faces = golden_io.synthetic_faces(32, RESOLUTION)
        torch.manual_seed(SEED)
        G, D = models.build("r3gan", params["arch"], RESOLUTION)
        self.generator = torch.Generator().manual_seed(SEED)
        perturb_zeros(G, self.generator)
        perturb_zeros(D, self.generator)
        self.init = {"G": golden_io.state_dict(G), "D": golden_io.state_dict(D)}
        self.G, self.D = official_networks(networks, params["arch"])
        copy_into(G, self.G)
        copy_into(D, self.D)
        self.maps = {"G": golden_io.NameMap.in_order(G, self.G), "D": golden_io.NameMap.in_order(D, self.D)}
        self.G_ema = copy.deepcopy(self.G).eval()
        self.pipe = augment.AugmentPipe(**AUGMENT_KWARGS).train().requires_grad_(False)
        self.loss = loss_module.R3GANLoss(G=self.G, D=self.D, augment_pipe=self.pipe)
        self.opts = {
            "D": torch.optim.Adam(self.D.parameters(), betas=[0.0, 0.0], eps=1e-8),  # official [0, 0]: floats here
            "G": torch.optim.Adam(self.G.parameters(), betas=[0.0, 0.0], eps=1e-8),
        }
        self.phases = build_phases(LossSettings.model_validate(params["loss"]))
        assert [p.name for p in self.phases] == ["Dboth", "Gmain"]

    def outputs(self) -> dict[str, torch.Tensor]:
        """G's and D's outputs at the initial weights (drawn after them from the same generator)."""
        probe_z = torch.randn(4, ARCH["z_dim"], generator=self.generator)
        probe_x = torch.randn(4, 3, RESOLUTION, RESOLUTION, generator=self.generator)
        with torch.no_grad():
            return {"z": probe_z, "x": probe_x, "G": self.G(probe_z, None).clone(), "D": self.D(probe_x, None).clone()}

    def state(self) -> golden_io.LoopState:
        return {
            "G": self.maps["G"].to_ours(self.G),
            "D": self.maps["D"].to_ours(self.D),
            "G_ema": self.maps["G"].to_ours(self.G_ema),
            "adam": {net: self.maps[net].adam_to_ours(self.opts[net], getattr(self, net)) for net in "GD"},
            "augment_p": self.pipe.p.detach().clone(),
        }

    def load(self, state: golden_io.LoopState) -> None:
        for net, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            self.maps[net[0]].load_theirs(module, state[net])
        for net in "GD":
            self.maps[net].load_adam_theirs(self.opts[net], getattr(self, net), state["adam"][net])
        self.pipe.p.copy_(state["augment_p"])

    def step(self, step: int) -> dict:
        """training_loop.py:285-355 for one iteration: the scheduled values, the D phase, the G phase, the EMA."""
        params, nimg = self.params, step * BATCH
        draw_spec = DrawSpec(ARCH["z_dim"], params["xflip"], params["loss"]["latents"])
        draws = step_draws(SEED, step, BATCH, len(self.faces), self.phases, draw_spec)
        inputs = {
            "D": (golden_io.reals(self.faces, draws.idx, draws.flips), draws.z["Dboth"]),
            "G": (golden_io.reals(self.faces, draws.idx_g, draws.flips_g), draws.z["Gmain"]),
        }
        values = official_schedule_values(self.schedule, nimg, params)
        self.pipe.p.copy_(torch.as_tensor(values["aug_p"], dtype=torch.float32))
        torch.manual_seed(step_seed(SEED, step, 1))  # the project's loop seeds the phases' draws (augmentation)
        terms, gradients = {}, {}
        for name, phase in (("D", "Dboth"), ("G", "Gmain")):
            module = getattr(self, name)
            terms[phase] = official_phase(name, module, self.opts[name], self.loss, *inputs[name], values)
            terms[phase] = {k: v.detach().clone() for k, v in terms[phase].items()}
            gradients[phase] = golden_io.gradient_record(module)
            self.opts[name].step()
        ema_beta = 0.5 ** (BATCH / max(values["ema_nimg"], 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        return {"terms": terms, "gradients": gradients}


NAMES = ("r3gan",)
FORCED, FREE_STEPS = [0, 1, 3], 2  # every iteration moves every scheduled value: the first, two more, the last


def official_run(name: str = "r3gan") -> OfficialRun:
    return OfficialRun()


def main(only: list[str] | None = None) -> None:
    run = OfficialRun()
    outputs = run.outputs()
    trajectory = golden_io.record(run, STEPS, FORCED, FREE_STEPS)
    golden_io.save(
        "r3gan",
        "brownvc+R3GAN",
        [
            "R3GAN/Networks.py, R3GAN/Resamplers.py, R3GAN/FusedOperators.py (networks)",
            "R3GAN/Trainer.py, training/loss.py (RpGAN + R1 + R2)",
            "training/augment.py (AugmentPipe, train.py --aug=1)",
            "training/training_loop.py:29 (cosine_decay_with_warmup), :285-355 (the iteration body)",
        ],
        run.params,
        model="r3gan",
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(np.ascontiguousarray(run.faces)),
        init=run.init,
        outputs=outputs,
        schedules=official_schedules(run.schedule),
        **trajectory,
    )


if __name__ == "__main__":
    main()
