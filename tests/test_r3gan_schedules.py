"""R3GAN's cosine schedules as the training loop applies them to a run of the quick profile (brownvc/R3GAN's
FFHQ-64 preset), against the official formula written out here with the official preset's literals.

brownvc/R3GAN train.py, preset FFHQ-64 (decay_nimg = 2e7, ema_nimg = 500 * 1000):
  lr_scheduler    2e-4 -> 5e-5     beta2_scheduler 0.9 -> 0.99     gamma_scheduler 2 -> 0.2
  ema_scheduler   0 -> 500,000     aug_scheduler   0 -> 0.3        (--batch=256, --aug=1)
training/training_loop.py:29 cosine_decay_with_warmup (no warmup, no hold), evaluated at cur_nimg before each
iteration; each phase's optimizer gets g['lr'] = cur_lr, g['betas'] = (0, cur_beta2); augment_pipe.p = cur_aug_p;
the loss gets gamma = cur_gamma; G_ema's beta = 0.5 ** (batch_size / max(cur_ema_nimg, 1e-8)).
"""

import math

import pytest
import torch

import models
from facegan import stage_params
from facegan.params import load_params
from facegan.training import distributed, loop, step
from facegan.training.context import RunContext
from facegan.training.phases import build_phases
from facegan.training.progressive import Schedule
from tests.helpers import REPO, TINY_R3GAN_ARCH, cpu_train

torch.set_num_threads(1)
CPU = torch.device("cpu")
DECAY_NIMG = 2e7  # official decay_nimg of the FFHQ presets


def official_cosine(cur_nimg: float, base_value: float, final_value: float, total_nimg: float = DECAY_NIMG) -> float:
    """brownvc/R3GAN training/training_loop.py:29-38 with warmup_nimg = hold_base_value_nimg = 0."""
    decay = 0.5 * (1 + math.cos(math.pi * cur_nimg / float(total_nimg)))
    cur_value = base_value + (1 - decay) * (final_value - base_value)
    return final_value if cur_nimg > total_nimg else cur_value


@pytest.fixture(scope="module")
def quick_r3gan():
    """The R3GAN run the quick profile trains (the train stage's view of params.yaml), with a tiny network."""
    view = stage_params.views(load_params(REPO / "params.yaml", {"profile": "quick"}))["r3gan"]
    arch = {**view.params.arch.model_dump(), **TINY_R3GAN_ARCH}
    cfg = view.replaced(params={**view.params.model_dump(), "arch": arch}, train=cpu_train(), resolution=16)
    spec = models.get_spec("r3gan")
    schedule = Schedule.for_model("r3gan", cfg.params, 2, spec.progressive)
    phases = build_phases(cfg.params.loss)
    ctx = RunContext(cfg, spec, schedule, phases, distributed.World(), CPU, torch.float32)
    state = loop.build_state(ctx)
    runner = step.StepRunner(ctx, None)
    return cfg, ctx, state, runner


@pytest.mark.parametrize("nimg", [0, 5_000_192, 12_345_600, 25_000_064])
def test_every_schedule_the_loop_sets_is_the_official_ffhq64_cosine(quick_r3gan, nimg):
    """lr (both nets), Adam's betas (both nets), p of the --aug=1 pipe, R1/R2's gamma and G_ema's beta at the top of
    a step taken at `nimg` images: at the start, a quarter and 62 % of the way along the 20M-image cosine, and past
    its end (the final values)."""
    cfg, ctx, state, runner = quick_r3gan
    state.nimg = nimg
    values = runner.values.at(nimg)  # what the loop's step reads first
    segment, _ = step.enter_step(state, values, ctx, runner.lazy)
    assert segment.batch_size == 256  # official --batch=256 (FFHQ)
    lr = official_cosine(nimg, 2e-4, 5e-5)
    beta2 = official_cosine(nimg, 0.9, 0.99)
    for net, opt in (("G", state.opt_G), ("D", state.opt_D)):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(lr, rel=1e-12), net
            assert group["betas"][0] == 0.0 and group["betas"][1] == pytest.approx(beta2, rel=1e-12), net
    assert float(state.loss.augment_pipe.p) == pytest.approx(official_cosine(nimg, 0.0, 0.3), rel=1e-6, abs=1e-12)
    assert values.r1_gamma == pytest.approx(official_cosine(nimg, 2.0, 0.2), rel=1e-12)
    ema_beta = 0.5 ** (256 / max(official_cosine(nimg, 0.0, 500 * 1000), 1e-8))
    assert values.ema_beta == pytest.approx(ema_beta, rel=1e-12, abs=1e-300)
