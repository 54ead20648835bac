"""StyleSwin against microsoft/StyleSwin's train_styleswin.py, whole training iterations.

The official loop lives in `train()`; this script runs the body of its `for idx in range(args.iter):`
loop from `# Train D` up to the logging (train_styleswin.py:131-216), read from the file, once per
step: D on fakes and reals, bCR (CR_DiffAug of both, D on the augmented fakes, then the reals), the
logistic loss, backward, D's gradient clipped at norm 5, Adam; R1 every d_reg_every steps (step 0
included) times the interval; then G's non-saturating step; then accumulate() into G_ema. Its helpers
(d_logistic_loss, d_r1_loss, g_nonsaturating_loss, requires_grad, accumulate) come from the same file,
CR_DiffAug and reduce_loss_dict from utils/. The networks are the official Generator and Discriminator
(spectral norm, `--D_sn`) holding our weights (verification/styleswin_networks.py), at the smallest
official widths (512 channels at 16x16): too large to store, so the golden keeps, per tensor, the norm
and sum of the initial weights (to check the test draws the same ones), of the first gradients and of
the final weights, in the project's names - quantities a reshape or transpose leaves alone.

Inputs are the project's: reals in the official ImageNet normalisation ((uint8 / 255 - mean) / std, as
transforms.ToTensor + Normalize), the latents of the project's Dmain and Gmain phases for the loop's two
`torch.randn((args.batch, 512))` (the 512 is the official style_dim: ours is the arch's z_dim), and the
global torch seed the project's loop sets at each step, from which CR_DiffAug draws.

    python -m verification.regenerate --only styleswin
"""

from __future__ import annotations

import importlib.util
import pathlib
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import autograd, nn, optim

import models
from facegan.settings import LossSettings
from facegan.training.phases import build_phases
from facegan.training.step import DrawSpec, step_draws, step_seed
from tests.helpers import offset_biases, study_model
from verification import golden_io
from verification.official import official_repo
from verification.source import load_definitions, loop_body
from verification.styleswin_networks import (
    OFFICIAL_ARCH,
    discriminator_name_map,
    exact_haar_filters,
    generator_name_map,
    official_styleswin,
)

REPO = "microsoft+StyleSwin"
STEPS, BATCH, RESOLUTION, SEED = 2, 4, 16, 9
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # train_styleswin.py:468


def load_module(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TorchWithLatents:
    """`torch` for the loop body: its `torch.randn` hands out the project's latents in order."""

    def __init__(self, latents: list[torch.Tensor]):
        self.latents = list(latents)

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn(self, *args, **kwargs):
        return self.latents.pop(0).clone()


class Spy:
    """An optimiser that records its network's per-tensor gradient norms before each step."""

    def __init__(self, opt, order: list[str], module: nn.Module):
        self.opt, self.order, self.module, self.records = opt, order, module, []

    def step(self):
        grads = dict(self.module.named_parameters())
        self.records.append(tensor_norms({name: grads[name].grad for name in self.order}, self.order))
        self.opt.step()

    def __getattr__(self, name):
        return getattr(self.opt, name)


def tensor_norms(tensors: dict, order: list[str]) -> torch.Tensor:
    """(norm, sum) per tensor in `order`; a missing gradient counts as zeros."""
    rows = [
        (0.0, 0.0) if tensors[n] is None else (tensors[n].double().norm().item(), tensors[n].double().sum().item())
        for n in order
    ]
    return torch.tensor(rows, dtype=torch.float64)


def official_names(names_map: dict, ours: nn.Module) -> tuple[list[str], list[str]]:
    """Our parameter names in registration order (those with an official twin) and their official names."""
    official_of = {our: theirs for theirs, (our, _) in names_map.items()}
    our_names = [n for n, _ in ours.named_parameters() if n in official_of]
    return our_names, [official_of[n] for n in our_names]


NAMES = ("styleswin",)


def official_training(repo: pathlib.Path, params: dict, off_G, off_D, g_ema, their_names: dict) -> SimpleNamespace:
    """train_styleswin.py's loop body, ready to exec step by step: its helpers, args, optimizers (spied) and
    the namespace the body reads."""
    script = repo / "train_styleswin.py"
    lp = params["loss"]
    ns = {"torch": torch, "F": F, "autograd": autograd, "nn": nn}
    lines = load_definitions(
        script, ["requires_grad", "accumulate", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss"], ns
    )
    cr = load_module(repo / "utils" / "CRDiffAug.py", "_official_crdiffaug")
    dist = load_module(repo / "utils" / "distributed.py", "_official_distributed")
    args = SimpleNamespace(
        batch=BATCH, lmdb=False, gan_weight=1, bcr=True, bcr_fake_lambda=lp["bcr_fake_lambda"],
        bcr_real_lambda=lp["bcr_real_lambda"], d_reg_every=lp["r1_every"], r1=lp["r1_gamma"], lr_decay=False,
        ttur=True, D_lr=params["lr_d"], beta1=params["betas_d"][0], beta2=params["betas_d"][1],
    )  # fmt: skip
    assert params["lr_g"] == params["lr_d"] / 4  # --ttur
    d_reg_ratio, g_reg_every = args.d_reg_every / (args.d_reg_every + 1), 10000000  # train_styleswin.py:367, 396-397
    g_reg_ratio = g_reg_every / (g_reg_every + 1)
    g_optim = optim.Adam(  # train_styleswin.py:438-442
        off_G.parameters(), lr=args.D_lr / 4 * g_reg_ratio, betas=(args.beta1**g_reg_ratio, args.beta2**g_reg_ratio)
    )
    d_optim = optim.Adam(  # train_styleswin.py:443-447
        off_D.parameters(), lr=args.D_lr * d_reg_ratio, betas=(args.beta1**d_reg_ratio, args.beta2**d_reg_ratio)
    )
    spies = {"G": Spy(g_optim, their_names["G"], off_G), "D": Spy(d_optim, their_names["D"], off_D)}
    ns.update(
        args=args, generator=off_G, discriminator=off_D, g_ema=g_ema, g_module=off_G, d_module=off_D,
        g_optim=spies["G"], d_optim=spies["D"], device=torch.device("cpu"), CR_DiffAug=cr.CR_DiffAug,
        reduce_loss_dict=dist.reduce_loss_dict, l2_loss=torch.nn.MSELoss(), loss_dict={},
        accum=0.5 ** (32 / (10 * 1000)), r1_loss=torch.tensor(0.0),
    )  # fmt: skip
    body, first, last = loop_body(
        script, "for idx in range(args.iter):", stop_before="if get_rank() == 0", start_at="generator.train()"
    )

    return SimpleNamespace(ns=ns, args=args, spies=spies, body=body, first=first, last=last, lines=lines)


def official_steps(official: SimpleNamespace, params: dict, faces) -> tuple[list[dict], list[float]]:
    """STEPS official steps on the project loop's draws: each phase's loss terms, and D's norm before the clip."""
    ns, args, body, lp = official.ns, official.args, official.body, params["loss"]
    phases = build_phases(LossSettings.model_validate(lp))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    steps, clip_norms = [], []
    clip = nn.utils.clip_grad_norm_
    nn.utils.clip_grad_norm_ = lambda parameters, max_norm: (
        clip_norms.append(float(clip(parameters, max_norm))) or clip_norms[-1]
    )
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the loop's `.cuda()` calls: this runs on the CPU
    try:
        for step in range(STEPS):
            draws = step_draws(
                SEED, step, BATCH, len(faces), phases, DrawSpec(params["arch"]["z_dim"], params["xflip"], lp["latents"])
            )
            assert draws.flips is None  # --use_flip is off in the official face commands
            images = torch.from_numpy(faces[draws.idx.numpy()]).permute(0, 3, 1, 2).float() / 255
            real = (images - mean) / std  # transforms.ToTensor() then Normalize(mean, std)
            ns["loader"] = iter([(real, None), (real, None)])  # D's batch, then G's (drawn, unused)
            ns["torch"] = TorchWithLatents([draws.z["Dmain"], draws.z["Gmain"]])
            ns["i"] = step
            torch.manual_seed(step_seed(SEED, step, 1))  # the project loop's global seed of this step
            exec(body, ns)  # noqa: S102 - train_styleswin.py's own loop body
            record = {"Dmain": {"D/adversarial+D/consistency": ns["d_loss"].detach().clone()}}
            if step % args.d_reg_every == 0:
                record["Dreg"] = {"D/r1": (args.r1 / 2 * ns["r1_loss"]).detach().clone()}
            record["Gmain"] = {"G/adversarial": ns["g_loss"].detach().clone()}
            steps.append(record)
            print(f"step {step}: " + ", ".join(f"{k} {float(v):.6f}" for t in record.values() for k, v in t.items()))
    finally:
        nn.utils.clip_grad_norm_, torch.Tensor.cuda = clip, cuda
    return steps, clip_norms


def main(only: list[str] | None = None) -> None:
    repo = official_repo(REPO)
    params = study_model(
        "styleswin",
        batch_size=BATCH,
        kimg=STEPS * BATCH / 1000,
        lr_decay_kimg=0.0,  # the loop's --lr_decay is off here
        ema_kimg=10 * BATCH / 32,  # accumulate() hard-codes 0.5 ** (32 / 10k) per step of the official batch of 32
        arch=OFFICIAL_ARCH,
    )
    faces = golden_io.synthetic_faces(8, RESOLUTION)
    torch.manual_seed(SEED)
    G, D = models.build("styleswin", params["arch"], RESOLUTION)
    G.train(), D.train()
    offset_biases(D, SEED)  # no pre-activation exactly on a leaky ReLU's kink (tests/helpers.offset_biases)
    off_G, off_D = official_styleswin(G, D, params["arch"], RESOLUTION)
    # The official Haar filters are products of float32 1/sqrt(2)s (+-0.49999997); ours are +-0.5. Cutout's exact
    # zeros then cancel exactly in ours and leave 1e-7 residues in theirs, which land on either side of the leaky
    # ReLU's kink while the biases are still 0 (step 0): set theirs to +-0.5, the transform both codes mean.
    exact_haar_filters(off_D)
    g_ema, _ = official_styleswin(G, D, params["arch"], RESOLUTION)
    g_ema.eval()
    our_G_names, their_G_names = official_names(generator_name_map(G), G)
    our_D_names, their_D_names = official_names(discriminator_name_map(D), D)
    init = {
        "G": tensor_norms(dict(G.named_parameters()), our_G_names),
        "D": tensor_norms(dict(D.named_parameters()), our_D_names),
    }

    official = official_training(repo, params, off_G, off_D, g_ema, {"G": their_G_names, "D": their_D_names})
    steps, clip_norms = official_steps(official, params, faces)
    print("D's gradient norm before the clip at 5:", clip_norms)
    named = {
        "G": dict(off_G.named_parameters()),
        "D": dict(off_D.named_parameters()),
        "G_ema": dict(g_ema.named_parameters()),
    }
    final = {
        "G": tensor_norms(named["G"], their_G_names),
        "D": tensor_norms(named["D"], their_D_names),
        "G_ema": tensor_norms(named["G_ema"], their_G_names),
    }
    golden_io.save(
        "styleswin",
        REPO,
        [
            f"train_styleswin.py:{official.first}-{official.last} (loop body)",
            f"train_styleswin.py:{min(official.lines.values())}- (helpers)",
        ],
        params,
        model="styleswin",
        seed=SEED,
        resolution=RESOLUTION,
        faces=torch.from_numpy(faces),
        names={"G": our_G_names, "D": our_D_names},
        offset_biases=True,
        init=init,
        steps=steps,
        gradients={
            "Dmain": official.spies["D"].records[0],
            "Dreg": official.spies["D"].records[1],
            "Gmain": official.spies["G"].records[0],
        },
        clip_norms=torch.tensor(clip_norms),
        final=final,
    )


if __name__ == "__main__":
    main()
