"""ADA against NVlabs' own: the AugmentPipe of stylegan3's training/augment.py at fixed random states, R1
through it, and the adaptive p of training/training_loop.py over a scripted sequence of D's real logits.

  - pipe: the bgc pipe as train.py --aug=ada builds it (training/augment.py, every multiplier 1) on 6 faces at
    four values of p, each from its own torch seed; also the next draw after it, which tells whether both
    pipes took the same number of random numbers;
  - R1 through the pipe: grad of sum(||d D(pipe(x)) / dx||^2) w.r.t. a tiny conv D's weight, with the
    training loop's grid_sample_gradfix.enabled = True (training_loop.py:133);
  - p: 16 steps of scripted real logits (Dmain every step, Dreg every 16th, as the phases report
    Loss/signs/real in training/loss.py) through the official training_stats Collector and the loop's ADA
    block itself (training_loop.py:315-318, run from the file), batch 32, interval 4, target 0.6, ada_kimg 500.

    python -m verification.regenerate --only ada
"""

from __future__ import annotations

import ast

import numpy as np
import torch

from verification import golden_io
from verification.official import import_nvlabs, official_repo

REPO = "NVlabs+stylegan3"
BGC = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1)  # train.py:255, blit and geom
BGC |= dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)  # and color
PS = (0.0, 0.2, 0.6, 1.0)
ADA = {"batch_size": 32, "ada_interval": 4, "ada_target": 0.6, "ada_kimg": 500}


def ada_block():
    """The `# Execute ADA heuristic.` statement of training_loop(), compiled from the official file."""
    path = official_repo(REPO) / "training" / "training_loop.py"
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.If)
            and "ada_stats is not None" in ast.get_source_segment(source, node.test)
            and "adjust" in ast.get_source_segment(source, node)
        ):
            code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
            return code, node.lineno, node.end_lineno
    raise LookupError("training_loop.py has no ADA heuristic block")


def scripted_logits(steps: int, batch: int) -> list[torch.Tensor]:
    """Per step, D's real logits: mostly positive early (p rises), mostly negative late (p falls)."""
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(batch, 1, generator=gen) + (1.5 if step < 8 else -0.5) for step in range(steps)]


NAMES = ("ada",)


def main(only: list[str] | None = None) -> None:
    augment, training_stats, misc = import_nvlabs(
        REPO, "training.augment", "torch_utils.training_stats", "torch_utils.misc"
    )
    (grid_sample_gradfix,) = import_nvlabs(REPO, "torch_utils.ops.grid_sample_gradfix")
    grid_sample_gradfix.enabled = True  # as training_loop.py:133
    faces = torch.from_numpy(golden_io.synthetic_faces(6, 16)).permute(0, 3, 1, 2).float() / 127.5 - 1

    pipe = augment.AugmentPipe(**BGC).train().requires_grad_(False)
    outputs, next_draws = [], []
    for i, p in enumerate(PS):
        pipe.p.copy_(torch.as_tensor(p))
        torch.manual_seed(100 + i)
        outputs.append(pipe(faces).detach().clone())
        next_draws.append(torch.rand(4))

    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    pipe.p.copy_(torch.as_tensor(0.6))
    x = faces.clone().requires_grad_(True)
    torch.manual_seed(200)
    logits = torch.nn.functional.conv2d(pipe(x), weight, padding=1).square().mean(dim=(1, 2, 3))
    (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    r1 = grad_x.square().sum(dim=(1, 2, 3)).mean()
    (r1_grad_weight,) = torch.autograd.grad(r1, weight)

    code, first, last = ada_block()
    pipe.p.copy_(torch.as_tensor(0.0))
    ada_stats = training_stats.Collector(regex="Loss/signs/real")
    namespace = {
        "np": np,
        "misc": misc,
        "device": torch.device("cpu"),
        "augment_pipe": pipe,
        "ada_stats": ada_stats,
        **ADA,
    }
    logits_per_step, p_after = scripted_logits(16, ADA["batch_size"]), []
    for step, real_logits in enumerate(logits_per_step):
        training_stats.report("Loss/signs/real", real_logits.sign())  # Dmain
        if step % 16 == 0:
            training_stats.report("Loss/signs/real", real_logits.sign())  # Dreg (lazy R1: the same reals)
        namespace["batch_idx"] = step + 1  # the loop increments batch_idx before its ADA block
        exec(code, namespace)  # noqa: S102 - training_loop.py's own ADA block
        p_after.append(float(pipe.p))
    print("p after each step:", " ".join(f"{p:.6f}" for p in p_after))

    golden_io.save(
        "ada",
        REPO,
        ["training/augment.py (AugmentPipe)", f"training/training_loop.py:{first}-{last} (ADA heuristic)"],
        {"pipe": BGC, **ADA},
        faces=faces,
        ps=torch.tensor(PS),
        seeds=torch.tensor([100 + i for i in range(len(PS))]),
        outputs=torch.stack(outputs),
        next_draws=torch.stack(next_draws),
        r1={"weight": weight.detach(), "seed": 200, "p": 0.6, "grad_weight": r1_grad_weight},
        signs={"logits": torch.stack(logits_per_step), "p_after": torch.tensor(p_after, dtype=torch.float64)},
    )


if __name__ == "__main__":
    main()
