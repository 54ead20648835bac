"""DCGAN against PyTorch's DCGAN example (pytorch/examples dcgan/main.py), whole training iterations.

main.py is a script (it parses arguments and loads a dataset when run), so this reads from it only
what one iteration needs - the Generator and Discriminator classes, the BCE criterion, the labels,
the two Adam optimisers - and runs the body of its training loop (`for i, data in enumerate(dataloader, 0):`,
up to the progress print) once per step, with the project's draws: the step's real faces and its one
latent batch (`noise = torch.randn(...)` returns it). The project's weights are copied into the example's
networks first (same layer order: `main.<i>` there, `net.<i>` here).

    python -m verification.regenerate --only dcgan
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import DrawSpec, step_draws
from tests.helpers import study_model
from verification import golden_io
from verification.official import official_repo
from verification.source import load_definitions, loop_body

REPO = "pytorch+examples"
STEPS, BATCH, RESOLUTION, SEED = 4, 8, 64, 3
# ngf = ndf = 2 at 64x64 (the example's size): small enough to store the whole state of every compared step
ARCH = {"z_dim": 8, "g_channels": 2, "d_channels": 2, "max_channels": 64}


class TorchWithNoise:
    """`torch` for the loop body, whose `torch.randn` is the step's latent batch (the project's draw)."""

    def __init__(self, noise: torch.Tensor):
        self.noise = noise

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *shape, **kwargs):
        assert tuple(shape) == tuple(self.noise.shape), (shape, self.noise.shape)
        return self.noise.clone()


class GradientSpy:
    """Wraps an optimiser: records the network's gradient before each of its steps."""

    def __init__(self, opt: optim.Optimizer, module: nn.Module):
        self.opt, self.module, self.records = opt, module, []

    def step(self):
        self.records.append(golden_io.gradient_record(self.module))
        self.opt.step()

    def __getattr__(self, name):
        return getattr(self.opt, name)


def official_networks(path, G: nn.Module, D: nn.Module) -> dict:
    namespace = {
        "nn": nn,
        "torch": torch,
        "nz": ARCH["z_dim"],
        "ngf": ARCH["g_channels"],
        "ndf": ARCH["d_channels"],
        "nc": 3,
    }
    load_definitions(path, ["Generator", "Discriminator"], namespace)
    netG, netD = namespace["Generator"](0), namespace["Discriminator"](0)
    for ours, theirs in ((G, netG), (D, netD)):
        mapped = {key.replace("net.", "main.", 1): value for key, value in ours.state_dict().items()}
        theirs.load_state_dict(mapped, strict=True)  # every tensor, no more, no fewer
    return {"netG": netG, "netD": netD}


class OfficialRun:
    """The example's iteration on CPU holding the project's initial weights: `step(k)` runs iteration k,
    `state()` and `load()` read and write its whole state in the project's terms (verification/golden_io.py).
    The example keeps no G EMA; the study's DCGAN neither (ema_kimg 0: G_ema is a copy of G after every step),
    so the state's G_ema is G."""

    def __init__(self):
        path = official_repo(REPO) / "dcgan" / "main.py"
        self.params = params = study_model("dcgan", batch_size=BATCH, kimg=STEPS * BATCH / 1000, arch=ARCH)
        assert params["ema_kimg"] == 0
        self.faces = golden_io.synthetic_faces(16, RESOLUTION)
        torch.manual_seed(SEED)
        G, D = models.build("dcgan", params["arch"], RESOLUTION)
        self.init = {"G": golden_io.state_dict(G), "D": golden_io.state_dict(D)}
        ns = official_networks(path, G, D)
        ns.update({"torch": torch, "nn": nn, "optim": optim, "device": torch.device("cpu"), "nz": ARCH["z_dim"]})
        ns["opt"] = type("Opt", (), {"lr": params["lr_d"], "beta1": params["betas_d"][0], "dry_run": False})
        lines = load_definitions(path, ["criterion", "real_label", "fake_label", "optimizerD", "optimizerG"], ns)
        assert params["lr_g"] == params["lr_d"] and params["betas_g"] == params["betas_d"] == [0.5, 0.999]
        self.spies = {"D": GradientSpy(ns["optimizerD"], ns["netD"]), "G": GradientSpy(ns["optimizerG"], ns["netG"])}
        self.opts = {"D": ns["optimizerD"], "G": ns["optimizerG"]}
        ns["optimizerD"], ns["optimizerG"] = self.spies["D"], self.spies["G"]
        self.body, first, last = loop_body(path, "for i, data in enumerate(dataloader, 0):", stop_before="print(")
        self.files = [
            f"dcgan/main.py:{lines['optimizerD']}-{lines['optimizerG']} (optimisers)",
            f"dcgan/main.py:{first}-{last} (loop body)",
        ]
        self.ns, self.G, self.D = ns, ns["netG"], ns["netD"]
        self.maps = {"G": prefixed_map(G, self.G), "D": prefixed_map(D, self.D)}
        self.phases = build_phases(LossSettings.model_validate(params["loss"]))

    def state(self) -> golden_io.LoopState:
        G = self.maps["G"].to_ours(self.G)
        return {
            "G": G,
            "D": self.maps["D"].to_ours(self.D),
            "G_ema": {name: value.clone() for name, value in G.items()},
            "adam": {net: self.maps[net].adam_to_ours(self.opts[net], getattr(self, net)) for net in "GD"},
        }

    def load(self, state: golden_io.LoopState) -> None:
        for net in "GD":
            self.maps[net].load_theirs(getattr(self, net), state[net])
            self.maps[net].load_adam_theirs(self.opts[net], getattr(self, net), state["adam"][net])

    def step(self, step: int) -> dict:
        params = self.params
        draw_spec = DrawSpec(ARCH["z_dim"], params["xflip"], params["loss"]["latents"])
        draws = step_draws(SEED, step, BATCH, len(self.faces), self.phases, draw_spec)
        z = draws.z["Dmain"]
        assert torch.equal(z, draws.z["Gmain"])  # latents per_step: G's step scores D's fakes
        images = golden_io.reals(self.faces, draws.idx, draws.flips)
        self.ns.update({"data": (images,), "i": step, "epoch": 0, "torch": TorchWithNoise(z.view(BATCH, -1, 1, 1))})
        exec(self.body, self.ns)  # noqa: S102 - the example's own loop body
        ns = self.ns
        return {
            "terms": {
                "Dmain": {"D/adversarial": (ns["errD_real"] + ns["errD_fake"]).detach().clone()},
                "Gmain": {"G/adversarial": ns["errG"].detach().clone()},
            },
            "gradients": {"Dmain": self.spies["D"].records[-1], "Gmain": self.spies["G"].records[-1]},
        }


def prefixed_map(ours: nn.Module, theirs: nn.Module) -> golden_io.NameMap:
    """`main.<i>` there is `net.<i>` here."""
    pairs = [(name.replace("net.", "main.", 1), name) for name in ours.state_dict()]
    assert sorted(off for off, _ in pairs) == sorted(theirs.state_dict())
    return golden_io.NameMap(pairs, ours)


NAMES = ("dcgan",)
FORCED, FREE_STEPS = [0, 1, 3], 2


def official_run(name: str = "dcgan") -> OfficialRun:
    return OfficialRun()


def main(only: list[str] | None = None) -> None:
    run = OfficialRun()
    trajectory = golden_io.record(run, STEPS, FORCED, FREE_STEPS)
    golden_io.save(
        "dcgan",
        REPO,
        run.files,
        run.params,
        model="dcgan",
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(run.faces),
        init=run.init,
        **trajectory,
    )


if __name__ == "__main__":
    main()
