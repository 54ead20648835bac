"""Each loss and regulariser of facegan/training against a value worked out by hand."""

import math

import pytest
import torch

from facegan.training import loss as training_loss
from facegan.training.loss import lazy_adam, lazy_ratio
from facegan.training.progressive import Schedule
from facegan.training.step import update_ema
from facegan.training.values import StepSchedule
from tests.helpers import model_settings

REAL = torch.tensor([0.0, 1.0])
FAKE = torch.tensor([0.0, -1.0])


def sp(x: float) -> float:  # softplus
    return math.log1p(math.exp(x))


def test_non_saturating_logistic():
    d = training_loss.d_adversarial("ns", REAL, FAKE)
    assert d.item() == pytest.approx((sp(0) + sp(-1)) / 2 + (sp(0) + sp(-1)) / 2)
    assert training_loss.g_adversarial("ns", FAKE).item() == pytest.approx((sp(0) + sp(1)) / 2)


def test_wasserstein_and_drift():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 0.0])
    assert training_loss.d_adversarial("wgan_gp", real, fake).item() == pytest.approx(-0.5 - 3.0)
    assert training_loss.g_adversarial("wgan_gp", fake).item() == pytest.approx(0.5)
    assert training_loss.drift_penalty(real, 0.001).item() == pytest.approx(0.001 * (4 + 16) / 2)


def test_hinge():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    assert training_loss.d_adversarial("hinge", real, fake).item() == pytest.approx(0.25 + 0.75)
    assert training_loss.g_adversarial("hinge", fake).item() == pytest.approx(-(-2.0 + 0.5) / 2)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError):
        training_loss.d_adversarial("lsgan", REAL, FAKE)


def test_r1_of_a_linear_critic_is_half_gamma_times_squared_weight_norm():
    w = torch.tensor([1.0, -2.0, 2.0, 0.0]).view(1, 1, 2, 2)
    D = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731  grad_x D = w everywhere
    real = torch.randn(3, 1, 2, 2).requires_grad_(True)
    assert training_loss.r1_penalty(D(real), real, gamma=10.0).item() == pytest.approx(0.5 * 10.0 * 9.0)


def test_gradient_penalty_on_a_quadratic_critic_at_known_interpolates():
    D = lambda x: 0.5 * x.square().flatten(1).sum(1)  # noqa: E731  grad_x D = x
    real = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2)
    fake = torch.zeros(1, 1, 1, 2)
    gp = training_loss.gradient_penalty(D, real, fake, weight=10.0, eps=torch.tensor([0.5]))
    assert gp.item() == pytest.approx(10.0 * (2.5 - 1.0) ** 2)  # x_hat = (1.5, 2), |x_hat| = 2.5


def test_path_length_penalty_and_its_running_mean():
    """images = 3 * ws (one w of 4 values as a 2x2 image), so J^T y = 3 y."""
    ws = torch.randn(2, 1, 4).requires_grad_(True)
    images = 3 * ws[:, 0].view(-1, 1, 2, 2)
    torch.manual_seed(7)
    noise = torch.randn(2, 1, 2, 2) / 2  # what the penalty draws: randn / sqrt(H * W)
    lengths = 3 * noise.flatten(1).norm(dim=1)
    torch.manual_seed(7)
    value, target = training_loss.path_length(images, ws, torch.zeros([]), all_mean=lambda t: t)
    mean = training_loss.PL_DECAY * lengths.mean()
    assert target.item() == pytest.approx(mean.item(), rel=1e-5)
    assert value.item() == pytest.approx((lengths - mean).square().mean().item(), rel=1e-5)


def ema_beta(params, batch: int, nimg: int) -> float:
    """The loop's G EMA decay at `nimg` images for a flat run of `params` at `batch`."""
    params = params.model_copy(update={"batch_size": batch})
    return StepSchedule(params, Schedule.flat(params, 4)).at(nimg).ema_beta


def test_ema_half_life_and_ramp_up():
    params = model_settings("stylegan2", ema_kimg=10.0, ema_rampup=0.0)
    assert ema_beta(params, 32, 1000) == pytest.approx(0.5 ** (32 / 10_000))
    ramped = model_settings("stylegan2", ema_kimg=10.0, ema_rampup=0.05)
    assert ema_beta(ramped, 32, 1000) == pytest.approx(0.5 ** (32 / 50))  # min(10k, 0.05 * 1000 images)
    assert ema_beta(ramped, 32, 10**7) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(ramped, 32, 0) == 0.0  # the first step copies G (official: cur_nimg before the step)
    assert ema_beta(model_settings("stylegan2", ema_kimg=0.0, ema_rampup=0.0), 32, 1000) == 0.0


def test_ema_update_moves_towards_the_generator():
    G, G_ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(G.weight, 1.0), torch.nn.init.constant_(G_ema.weight, 0.0)
    update_ema(G_ema, G, beta=0.9)
    assert G_ema.weight.item() == pytest.approx(0.1)
    update_ema(G_ema, G, beta=0.9, foreach=False)  # the per-tensor path: the same arithmetic
    assert G_ema.weight.item() == pytest.approx(0.19)


def test_per_network_adam_with_lazy_regularisation():
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], betas=(0.0, 0.99), interval=16)
    assert lazy_ratio(16) == pytest.approx(16 / 17) and lazy_ratio(1) == 1.0
    assert opt.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    plain = lazy_adam([torch.nn.Parameter(torch.zeros(1))], betas=(0.5, 0.999), interval=1)
    assert plain.param_groups[0]["betas"] == (0.5, 0.999)
