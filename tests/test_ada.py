"""ADA (facegan/training/ada.py) as a user of the training loop relies on it: the pipe's transforms, R1 through
augmented reals (second derivatives through the resampling), the adaptive p's rule and its checkpointed state.
The comparison with NVlabs' own AugmentPipe is in tests/test_golden.py."""

import math

import pytest
import torch

from facegan.training import ada
from facegan.training import loss as training_loss

torch.set_num_threads(1)


def faces(n: int = 4, size: int = 16, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(n, 3, size, size, generator=gen, dtype=dtype) * 2 - 1).contiguous()


def test_at_p_zero_the_pipe_returns_the_images_up_to_the_resampling_round_trip():
    images = faces()
    out = ada.AugmentPipe(p=0.0)(images)
    assert out.shape == images.shape
    assert (out - images).abs().max() < 1e-4  # up, identity warp, down with the orthogonal sym6 filter


def test_at_p_one_every_image_changes_and_the_same_random_state_repeats_it():
    images = faces(8)
    pipe = ada.AugmentPipe(p=1.0)
    torch.manual_seed(3)
    first = pipe(images)
    torch.manual_seed(3)
    assert torch.equal(pipe(images), first)
    assert ((first - images).flatten(1).abs().amax(1) > 0.05).all()


def test_r1_through_augmented_reals_has_second_derivatives_that_match_finite_differences():
    """R1 = ||d D(aug(x)) / dx||^2 differentiated w.r.t. D's weights, through grid_sample, the FIR filters
    and the colour matrix, checked by torch's gradgradcheck in float64 at fixed augmentation draws."""
    images = faces(2, 8, torch.float64).requires_grad_(True)
    weight = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    pipe = ada.AugmentPipe(p=1.0)

    def d_of_augmented(x, w):
        torch.manual_seed(11)  # the same transforms on every evaluation
        y = torch.nn.functional.conv2d(pipe(x), w, padding=1)
        return torch.nn.functional.softplus(y).mean(dim=(1, 2, 3))

    assert torch.autograd.gradgradcheck(d_of_augmented, (images, weight), atol=1e-5, rtol=1e-4)
    real = images.detach().requires_grad_(True)
    r1 = training_loss.r1_penalty(d_of_augmented(real, weight), real, gamma=1.0)
    (grad,) = torch.autograd.grad(r1, weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_p_moves_by_the_official_step_towards_the_target_and_stops_at_zero():
    """Official training_loop.py: adjust = sign(E[sign(D(real))] - target) * batch * interval / (ada_kimg * 1000),
    p = max(p + adjust, 0). At batch 32, interval 4, ada_kimg 500 one update moves p by 128 / 500,000."""
    rule, pipe = ada.AdaRule(target=0.6, interval=4, kimg=500.0), ada.AugmentPipe(p=0.0)
    step = 32 * 4 / 500_000
    tally, seen = ada.SignTally(), []
    for logits in ([3.0, 1.0, 2.0, 0.5], [1.0, -1.0, 1.0, 1.0], [1.0, -2.0, -1.0, 1.0], [-1.0] * 4, [-1.0] * 4):
        tally.add(torch.tensor(logits))  # sign means: 1.0, 0.5, 0.0, -1.0, -1.0
        ada.update_p(pipe, rule, tally, 32, lambda t: t)
        seen.append(float(pipe.p))
    assert seen == pytest.approx([step, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert rule.adjust(0.6, 32) == 0.0  # exactly on target: no move (np.sign(0) = 0)
    assert rule.adjust(0.9, 64) == pytest.approx(64 * 4 / 500_000)


def test_the_sign_tally_averages_every_logit_since_the_last_update():
    tally = ada.SignTally()
    tally.add(torch.tensor([1.0, 1.0, -1.0, 1.0]))  # Dmain's reals
    tally.add(torch.tensor([1.0, -1.0]))  # Dreg's reals (a smaller batch, counted per logit)
    assert tally.take_mean(lambda t: t) == pytest.approx(2 / 6)
    assert tally.take_mean(lambda t: t) == 0.0  # a fresh tally


def test_color_matrices_keep_the_luma_axis_for_hue_and_saturation():
    """Hue rotates around the luma axis and saturation scales away from it: grey stays grey."""
    v = ada.LUMA_AXIS
    theta = torch.tensor([0.7])
    grey = torch.tensor([0.3, 0.3, 0.3, 1.0])
    rotated = ada.rotate3d(v, theta)[0] @ grey
    torch.testing.assert_close(rotated, grey)
    assert math.isclose(float(torch.linalg.det(ada.rotate3d(v, theta)[0, :3, :3])), 1.0, rel_tol=1e-6)


def _runner(model: str, **changes):
    """The training step of `model` as the train stage builds it from params.yaml (the study's values)."""
    import models
    from facegan.handoff import ModelView
    from facegan.training.context import RunContext
    from facegan.training.phases import build_phases
    from facegan.training.step import StepRunner
    from tests.helpers import cpu_train, study_model

    cfg = ModelView.selected_run(model=model, params=study_model(model, **changes), train=cpu_train(), seed=0,
                                 resolution=16)  # fmt: skip
    spec, phases = models.get_spec(model), build_phases(cfg.params.loss)
    return StepRunner(RunContext(cfg, spec, None, phases, None, torch.device("cpu"), torch.float32), None)


@pytest.mark.parametrize("model", ["stylegan2", "stylegan3"])
def test_the_study_adapts_p_with_nvlabs_defaults_from_zero(model):
    """stylegan2-ada-pytorch / stylegan3 train.py --aug=ada: --target=0.6, training_loop.py ada_interval=4,
    ada_kimg=500, augment_p=0, augpipe bgc. The loop's rule at the study's batch moves p up by
    batch * 4 / 500,000 above a mean sign of 0.6 and down below it."""
    runner = _runner(model)
    assert runner.ada is not None
    assert (runner.ada.target, runner.ada.interval, runner.ada.kimg) == (0.6, 4, 500.0)
    augment = runner.cfg.params.augment
    assert augment.p == 0.0 and ada.PIPES[augment.pipe] == ada.Multipliers()  # all twelve bgc transforms at 1
    batch = runner.cfg.params.batch_size
    pipe, tally = ada.AugmentPipe(p=0.0), ada.SignTally()
    # 40 real logits per update, `positive` of them > 0: mean signs 0.65, 0.65, 0.55, then exactly 0.6 (no move)
    for positive, steps_up in [(33, 1), (33, 2), (31, 1), (32, 1)]:
        tally.add(torch.tensor([1.0] * positive + [-1.0] * (40 - positive)))
        ada.update_p(pipe, runner.ada, tally, batch, lambda t: t)
        assert float(pipe.p) == pytest.approx(steps_up * batch * 4 / 500_000, rel=1e-6), positive


@pytest.mark.parametrize("mode", ["fixed", "cosine", "none"])
def test_p_is_not_adapted_unless_the_mode_is_ada(mode):
    """augment.mode=fixed keeps p where the params put it (official --aug=fixed: ada_target None); R3GAN's p follows
    its cosine; none has no pipe. Only ada moves p by the sign heuristic."""
    model = "r3gan" if mode == "cosine" else "stylegan2"
    assert _runner(model, augment={"mode": mode, "p": 0.2}).ada is None
