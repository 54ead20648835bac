"""DCGAN against PyTorch's DCGAN example (pytorch/examples dcgan/main.py), whole training iterations.

main.py is a script (it parses arguments and loads a dataset when run), so this reads from it only
what one iteration needs - the Generator and Discriminator classes, the BCE criterion, the labels,
the two Adam optimisers - and runs the body of its training loop (`for i, data in enumerate(dataloader, 0):`,
up to the progress print) once per step, with the project's draws: the step's real faces and its one
latent batch (`noise = torch.randn(...)` returns it). The project's weights are copied into the example's
networks first (same layer order: `main.<i>` there, `net.<i>` here).

    python -m verification.golden_dcgan     # writes tests/golden/dcgan.pt
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import step_draws
from tests.helpers import study_model
from verification import golden_io
from verification.official import official_repo
from verification.source import load_definitions, loop_body

REPO = "pytorch+examples"
STEPS, BATCH, RESOLUTION, SEED = 4, 8, 64, 3
ARCH = {"z_dim": 8, "g_channels": 4, "d_channels": 4, "max_channels": 64}  # ngf = ndf = 4 at 64x64 (the example's size)


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
    namespace = {"nn": nn, "torch": torch, "nz": ARCH["z_dim"], "ngf": 4, "ndf": 4, "nc": 3}
    load_definitions(path, ["Generator", "Discriminator"], namespace)
    netG, netD = namespace["Generator"](0), namespace["Discriminator"](0)
    for ours, theirs in ((G, netG), (D, netD)):
        mapped = {key.replace("net.", "main.", 1): value for key, value in ours.state_dict().items()}
        theirs.load_state_dict(mapped, strict=True)  # every tensor, no more, no fewer
    return {"netG": netG, "netD": netD}


def main() -> None:
    path = official_repo(REPO) / "dcgan" / "main.py"
    params = study_model("dcgan", batch_size=BATCH, kimg=STEPS * BATCH / 1000, arch=ARCH)
    faces = golden_io.synthetic_faces(16, RESOLUTION)
    torch.manual_seed(SEED)
    G, D = models.build("dcgan", params["arch"], RESOLUTION)
    init = {"G": golden_io.state_dict(G), "D": golden_io.state_dict(D)}

    namespace = official_networks(path, G, D)
    namespace.update({"torch": torch, "nn": nn, "optim": optim, "device": torch.device("cpu"), "nz": ARCH["z_dim"]})
    namespace["opt"] = type("Opt", (), {"lr": params["lr_d"], "beta1": params["betas_d"][0], "dry_run": False})
    lines = load_definitions(path, ["criterion", "real_label", "fake_label", "optimizerD", "optimizerG"], namespace)
    assert params["lr_g"] == params["lr_d"] and params["betas_g"] == params["betas_d"] == [0.5, 0.999]
    spies = {
        "D": GradientSpy(namespace["optimizerD"], namespace["netD"]),
        "G": GradientSpy(namespace["optimizerG"], namespace["netG"]),
    }
    namespace["optimizerD"], namespace["optimizerG"] = spies["D"], spies["G"]
    body, first, last = loop_body(path, "for i, data in enumerate(dataloader, 0):", stop_before="print(")

    phases = build_phases(LossSettings.model_validate(params["loss"]))
    steps = []
    for step in range(STEPS):
        draws = step_draws(
            SEED, step, BATCH, len(faces), ARCH["z_dim"], params["xflip"], phases, params["loss"]["latents"]
        )
        z = draws.z["Dmain"]
        assert torch.equal(z, draws.z["Gmain"])  # latents per_step: G's step scores D's fakes
        images = golden_io.reals(faces, draws.idx, draws.flips)
        namespace.update({"data": (images,), "i": step, "epoch": 0, "torch": TorchWithNoise(z.view(BATCH, -1, 1, 1))})
        exec(body, namespace)  # noqa: S102 - the example's own loop body
        steps.append(
            {
                "Dmain": {"D/adversarial": (namespace["errD_real"] + namespace["errD_fake"]).detach().clone()},
                "Gmain": {"G/adversarial": namespace["errG"].detach().clone()},
            }
        )
    final = {
        name: {
            key.replace("main.", "net.", 1): value.detach().clone()
            for key, value in namespace[net].state_dict().items()
        }
        for name, net in (("G", "netG"), ("D", "netD"))
    }
    golden_io.save(
        "dcgan",
        "pytorch+examples",
        [
            f"dcgan/main.py:{lines['optimizerD']}-{lines['optimizerG']} (optimisers)",
            f"dcgan/main.py:{first}-{last} (loop body)",
        ],
        "losses rel 1e-5; weights atol 2e-6 (BCE on sigmoid vs softplus on logits; Adam divides by sqrt(v))",
        params,
        model="dcgan",
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(faces),
        init=init,
        steps=steps,
        gradients={"Dmain": spies["D"].records[0], "Gmain": spies["G"].records[0]},
        final=final,
    )


if __name__ == "__main__":
    main()
