"""The training step against the official schedules: phases, lazy regularisation, EMAs, style mixing,
StyleGAN3-R's blur, StyleSwin's clipping, lr decay and bCR, and the G EMA's arithmetic."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import models
from facegan.data.cache import CacheWriter
from facegan.data.synthetic import render_face
from facegan.handoff import ModelView
from facegan.ops import _dispatch
from facegan.params import deep_merge
from facegan.training import bcr, values
from facegan.training import loss as training_loss
from facegan.training import step as training_step
from facegan.training.loop import train
from facegan.training.loss import GanLoss, NetworkPasses, StepContext, build_loss
from facegan.training.phases import Phase, build_phases
from facegan.training.progressive import Schedule
from facegan.training.step import DrawSpec, step_draws
from facegan.training.terms import D_CONSISTENCY, D_GRADIENT_PENALTY, D_R1, G_PATH_LENGTH
from facegan.training.values import StepSchedule
from models.layers import MappingNetwork
from tests.helpers import cpu_train, loss_settings, model_settings, study_model, study_params

torch.set_num_threads(1)

TRAIN = cpu_train()
TINY_ARCH = {
    "stylegan2": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 128, "channel_max": 16},
    "styleswin": {
        "z_dim": 16,
        "w_dim": 16,
        "mapping_layers": 2,
        "window_size": 4,
        "head_dim": 8,
        "min_heads": 2,
        "mlp_ratio": 2.0,
        "g_channel_base": 128,
        "d_channel_base": 128,
        "channel_max": 16,
    },
    "stylegan": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "fmap_base": 64, "fmap_max": 16},
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    writer = CacheWriter(root / "faces", 16, 24)
    for i in range(24):
        writer.add(render_face(0, i, 16))
    return writer.finish(source="synthetic", synthetic=True)


def tiny(model: str, steps: int = 8, batch: int = 8, **changes) -> ModelView:
    params = deep_merge(
        study_model(model, kimg=steps * batch / 1000, batch_size=batch, ema_kimg=0.02, arch=TINY_ARCH[model]), changes
    )
    return ModelView.selected_run(model=model, params=params, train=dict(TRAIN), seed=5, resolution=16)


def gan_loss(G, D, loss, style_based: bool = False, progressive: bool = False) -> GanLoss:
    """The loss family of `loss` around G and D, in one process, in [-1, 1] units."""
    spec = SimpleNamespace(style_based=style_based, progressive=progressive, data_space=models.UNIT)
    return build_loss(NetworkPasses(G, D, style_based), spec, loss, all_mean=lambda t: t)


def step_values(params, nimg: int):
    """The loop's values of a step at `nimg` images for a flat (not growing) run of `params`."""
    return StepSchedule(params, Schedule.flat(params, 4)).at(nimg)


def test_each_model_gets_its_official_phases_in_the_official_order():
    expected = {
        "dcgan": ["Dmain", "Gmain"],
        "pggan": ["Dmain", "Gmain"],  # WGAN-GP every step is part of Dmain
        "stylegan": ["Dboth", "Gmain"],  # R1 every step: folded into D's step
        "stylegan2": ["Gmain", "Greg", "Dmain", "Dreg"],
        "stylegan3": ["Gmain", "Dmain", "Dreg"],  # no path length
        "styleswin": ["Dmain", "Dreg", "Gmain"],
    }
    for model, names in expected.items():
        assert [p.name for p in build_phases(loss_settings(model))] == names, model


class Recorder:
    """Spies on the loop: which phase ran at which step, what it backpropagated, and each optimizer step."""

    def __init__(self, monkeypatch):
        self.ran, self.losses, self.opt_steps = [], [], {}
        run_phase, phase_loss = training_step.StepRunner.run_phase, GanLoss.phase_loss

        def spy_run(runner, state, phase, *args, **kwargs):
            self.ran.append((state.step, phase.name))
            return run_phase(runner, state, phase, *args, **kwargs)

        def spy_loss(loss, phase, *args):
            value = phase_loss(loss, phase, *args)
            self.losses.append((phase.name, {k: v.item() for k, v in value.terms.items()}, value.total.item()))
            return value

        step = torch.optim.Adam.step

        def spy_step(opt, *args, **kwargs):
            self.opt_steps[id(opt)] = self.opt_steps.get(id(opt), 0) + 1
            return step(opt, *args, **kwargs)

        monkeypatch.setattr(training_step.StepRunner, "run_phase", spy_run)
        monkeypatch.setattr(GanLoss, "phase_loss", spy_loss)
        monkeypatch.setattr(torch.optim.Adam, "step", spy_step)

    def steps_of(self, name: str) -> list[int]:
        return [step for step, phase in self.ran if phase == name]


def test_lazy_regularisers_run_as_their_own_phases_on_the_right_steps_scaled_by_the_interval(
    cache_dir, tmp_path, monkeypatch
):
    """StyleGAN2 with r1_every=4 and pl_every=4: R1 and path length on steps 0 and 4 only, each its
    own optimizer step, its loss times 4 (official Greg/Dreg with gain = interval)."""
    record = Recorder(monkeypatch)
    cfg = tiny("stylegan2", loss={"r1_gamma": 1.0, "r1_every": 4, "pl_weight": 2.0, "pl_every": 4})
    stats = train(cfg, cache_dir, tmp_path / "run", tmp_path / "ckpt")
    assert record.steps_of("Gmain") == record.steps_of("Dmain") == list(range(8))
    assert record.steps_of("Greg") == record.steps_of("Dreg") == [0, 4]
    for name, terms, value in record.losses:
        if name == "Dreg":
            assert set(terms) == {D_R1} and value == pytest.approx(4 * terms[D_R1])
        if name == "Greg":
            assert set(terms) == {G_PATH_LENGTH} and value == pytest.approx(4 * terms[G_PATH_LENGTH])
        if name in ("Gmain", "Dmain"):
            assert not {D_R1, G_PATH_LENGTH} & set(terms) and value == pytest.approx(sum(terms.values()))
    assert sorted(record.opt_steps.values()) == [8 + 2, 8 + 2]  # main every step + the two lazy steps
    assert stats.training_phases == ["Gmain", "Greg", "Dmain", "Dreg"]
    assert {D_R1, G_PATH_LENGTH} <= set(stats.history[0].losses)


def test_g_ema_is_the_lerp_of_its_last_value_towards_g_by_the_official_beta(cache_dir, tmp_path, monkeypatch):
    cfg = tiny("stylegan2", ema_kimg=0.05, ema_rampup=0.5)
    checked = []
    update = training_step.update_ema

    def check(G_ema, G, beta, *args):
        before = [p.detach().clone() for p in G_ema.parameters()]
        nimg = 8 * len(checked)  # images before this step
        half_life = min(50.0, nimg * 0.5)
        assert beta == pytest.approx(0.5 ** (8 / max(half_life, 1e-8)))
        update(G_ema, G, beta, *args)
        for old, new, p in zip(before, G_ema.parameters(), G.parameters()):
            torch.testing.assert_close(new, p.detach().lerp(old, beta))
        checked.append(beta)

    monkeypatch.setattr(training_step, "update_ema", check)
    train(cfg, cache_dir, tmp_path / "run", tmp_path / "ckpt")
    assert len(checked) == 8 and checked[0] == 0.0 and all(0 < b < 1 for b in checked[1:])


def test_running_statistics_update_once_per_step_in_the_pass_that_makes_ds_fakes(cache_dir, tmp_path, monkeypatch):
    """w_avg moves once per step (official update_emas on Dgen only), not in every training-mode forward."""
    updates = []
    forward = MappingNetwork.forward

    def spy(self, z, *args, update_emas=False, **kwargs):
        if update_emas:
            updates.append(z.shape[0])
        return forward(self, z, *args, update_emas=update_emas, **kwargs)

    monkeypatch.setattr(MappingNetwork, "forward", spy)
    train(tiny("stylegan2", loss={"pl_every": 2}), cache_dir, tmp_path / "run", tmp_path / "ckpt")
    assert updates == [8] * 8


def test_path_length_batch_goes_through_style_mixing(cache_dir, tmp_path, monkeypatch):
    seen = []
    path_length = training_loss.path_length

    def spy(images, ws, *args, **kwargs):
        seen.append(ws.detach().clone())
        return path_length(images, ws, *args, **kwargs)

    monkeypatch.setattr(training_loss, "path_length", spy)
    train(tiny("stylegan2", loss={"style_mixing_prob": 1.0, "pl_every": 4}), cache_dir, tmp_path / "r", tmp_path / "c")
    assert len(seen) == 2 and seen[0].shape[0] == 4  # half the batch (official pl_batch_shrink 2)
    for ws in seen:
        assert not torch.equal(ws[:, 0], ws[:, -1]), "with mixing probability 1 the path-length ws are mixed"


def test_every_phase_draws_its_own_latents():
    draws = step_draws(0, 3, 8, 100, build_phases(loss_settings("stylegan2")), DrawSpec(z_dim=16, xflip=True))
    z = draws.z
    assert set(z) == {"Gmain", "Greg", "Dmain", "Dreg"}
    assert not torch.equal(z["Gmain"], z["Dmain"]) and not torch.equal(z["Gmain"], z["Greg"])


def test_stylegan_mixes_styles_only_among_the_layers_of_the_current_level():
    torch.manual_seed(0)
    cutoffs = {int(training_loss.mixing_cutoff(num_active=4, num_ws=10, prob=1.0)) for _ in range(200)}
    assert cutoffs == {1, 2, 3}
    assert training_loss.mixing_cutoff(num_active=4, num_ws=10, prob=0.0) == 10

    arch = deep_merge(study_params()["models"]["stylegan"]["arch"], TINY_ARCH["stylegan"])
    G, D = models.build("stylegan", arch, 32)  # 8 ws: two per level 4..32
    G.set_progress(1, 1.0)  # 8x8: four ws in use
    assert G.num_active_ws == 4
    gan = gan_loss(G, D, loss_settings("stylegan", style_mixing_prob=1.0), style_based=True, progressive=True)
    seen = []
    synthesis = G.synthesis.forward
    G.synthesis.forward = lambda ws, **kw: seen.append(ws.detach().clone()) or synthesis(ws, **kw)
    torch.manual_seed(1)
    for _ in range(20):
        gan.run_G(torch.randn(2, 16), StepContext(8, 0.0, None, 0.0))
    for ws in seen:
        first_other = next(i for i in range(8) if not torch.equal(ws[:, i], ws[:, 0]))
        assert 1 <= first_other < 4


def test_stylegan3_r_blurs_every_image_d_sees_fading_over_blur_fade_kimg():
    loss = loss_settings("stylegan3", blur_init_sigma=10.0, blur_fade_kimg=200.0)
    unfaded = loss_settings("stylegan3", blur_init_sigma=10.0, blur_fade_kimg=0.0)
    assert values.blur_sigma(loss, 0) == 10.0 and values.blur_sigma(loss, 100_000) == pytest.approx(5.0)
    assert values.blur_sigma(loss, 200_000) == 0.0 and values.blur_sigma(unfaded, 0) == 0.0
    # the official filter: exp2(-(x / sigma)^2) for |x| <= floor(3 sigma), normalised, separable, zero padded
    img = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    sigma, size = 2.5, 7
    taps = torch.exp2(-((torch.arange(-size, size + 1, dtype=torch.float64) / sigma) ** 2))
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    expected = F.conv2d(img.reshape(6, 1, 24, 24), kernel[None, None], padding=size).reshape(2, 3, 24, 24)
    torch.testing.assert_close(training_loss.gaussian_blur(img, sigma), expected)
    assert torch.equal(training_loss.gaussian_blur(img, 0.3), img)  # below 1/3 px: no blur, as official

    seen = []
    D = lambda x: seen.append(x.detach().clone()) or x.flatten(1).mean(1)  # noqa: E731
    G = lambda z: z.view(-1, 1, 4, 4).repeat(1, 3, 1, 1)  # noqa: E731
    cfg = loss_settings("stylegan3", r1_gamma=0.0)
    gan = gan_loss(G, D, cfg)
    real, z = torch.randn(2, 3, 4, 4), torch.randn(2, 16)
    ctx = StepContext(4, 1.0, None, 0.0)
    gan.phase_loss(Phase("Dmain", "D", 1, True, False), z, real, ctx)
    gan.phase_loss(Phase("Gmain", "G", 1, True, False), z, real, ctx)
    assert len(seen) == 3  # D saw fakes, reals (Dmain, the official order) and fakes (Gmain): each one blurred
    torch.testing.assert_close(seen[0], training_loss.gaussian_blur(G(z), 1.0))
    torch.testing.assert_close(seen[1], training_loss.gaussian_blur(real, 1.0))
    torch.testing.assert_close(seen[2], training_loss.gaussian_blur(G(z), 1.0))


def test_styleswin_clips_only_ds_main_step_at_norm_5(cache_dir, tmp_path, monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls.append((len(parameters), max_norm))
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = tiny("styleswin", steps=4, loss={"bcr_real_lambda": 0.0, "bcr_fake_lambda": 0.0})
    stats = train(cfg, cache_dir, tmp_path / "run", tmp_path / "ckpt")
    n_d = stats.params_D and len(list(models.build("styleswin", cfg.params.arch, 16)[1].parameters()))
    assert calls == [(n_d, 5.0)] * 4  # once per Dmain, D's parameters only; not Dreg, not G


def test_linear_lr_decay_reaches_zero_at_the_end_of_the_budget():
    params = model_settings("styleswin", kimg=10.0, lr_decay_kimg=4.0)

    def learning_rates(params, nimg):
        values = step_values(params, nimg)
        return values.lr_g, values.lr_d

    assert learning_rates(params, 0) == (params.lr_g, params.lr_d)
    assert learning_rates(params, 6_000) == (params.lr_g, params.lr_d)
    lr_g, lr_d = learning_rates(params, 8_000)
    assert lr_g == pytest.approx(params.lr_g / 2) and lr_d == pytest.approx(params.lr_d / 2)
    assert learning_rates(params, 10_000) == (0.0, 0.0)
    assert StepSchedule(params, Schedule.flat(params, 4)).kinds["lr"] == "linear"  # what the run's log line says
    plain = model_settings("stylegan2", kimg=10_000.0)
    assert learning_rates(plain, 9_999_000)[0] == 0.0025  # off


def test_bcr_adds_the_consistency_term_and_vanishes_for_an_identity_augmentation(monkeypatch):
    torch.manual_seed(0)
    arch = deep_merge(study_params()["models"]["styleswin"]["arch"], TINY_ARCH["styleswin"])
    G, D = models.build("styleswin", arch, 16)
    D.eval()  # spectral norm's power iteration would move D between the two passes
    cfg = loss_settings("styleswin")
    gan = gan_loss(G, D, cfg, style_based=True)
    dmain = Phase("Dmain", "D", 1, True, False)
    real, z, ctx = torch.randn(4, 3, 16, 16), torch.randn(4, 16), StepContext(16, 0.0, None, 0.0)
    assert gan.phase_loss(dmain, z, real, ctx).terms[D_CONSISTENCY] > 0
    monkeypatch.setattr(bcr, "consistency_augment", lambda x: x)
    assert gan.phase_loss(dmain, z, real, ctx).terms[D_CONSISTENCY].abs() < 1e-10


def test_consistency_augmentation_keeps_shape_and_changes_images():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    y = bcr.consistency_augment(x)
    assert y.shape == x.shape and not torch.allclose(x, y)
    cut = bcr.cutout(torch.ones(4, 3, 16, 16))
    assert ((cut == 0).flatten(1).float().mean(1) > 0).all() and (cut.flatten(1).mean(1) < 1).all()
    moved = bcr.translation(torch.ones(4, 1, 16, 16))
    assert moved.max() == 1.0 and moved.min() >= 0.0


def test_an_out_of_memory_error_is_raised_not_taken_as_a_kernel_failure(monkeypatch):
    monkeypatch.setattr(_dispatch, "_fallbacks", {})
    monkeypatch.setattr(_dispatch, "on_gpu", lambda x: True)
    monkeypatch.setattr(_dispatch, "triton_importable", lambda: True)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        _dispatch.dispatch("bias_act", "auto", torch.zeros(1), oom, lambda: torch.zeros(1))
    assert _dispatch.fallbacks() == {}
    _dispatch.dispatch("bias_act", "auto", torch.zeros(1), lambda: 1 / 0, lambda: torch.zeros(1))
    assert "ZeroDivisionError" in _dispatch.fallbacks()["bias_act"]


def test_kernel_fallbacks_are_recorded_in_the_run_stats(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(_dispatch, "_fallbacks", {"filtered_lrelu": "RuntimeError: PTX too new"})
    stats = train(tiny("stylegan2", steps=2), cache_dir, tmp_path / "run", tmp_path / "ckpt")
    assert stats.kernel_fallbacks == {"filtered_lrelu": "RuntimeError: PTX too new"}


@pytest.mark.parametrize("model", ["stylegan2", "styleswin"])
def test_the_bf16_lever_trains_on_cpu_with_fp32_emas(model, cache_dir, tmp_path):
    """train.precision=bf16 is an advertised opt-in on CPU too. StyleGAN2's mapping used to run under CPU
    autocast and crash on its fp32 w_avg; reduced precision stays inside the marked blocks, as on CUDA."""
    cfg = tiny(model, steps=2)
    cfg = cfg.replaced(train=dict(TRAIN, precision="bf16"))
    stats = train(cfg, cache_dir, tmp_path / "run", tmp_path / "ckpt")
    assert stats.precision == "bfloat16" and stats.steps == 2
    state = torch.load(tmp_path / "run" / "G_ema.pt", weights_only=True)["G_ema"]
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())


def test_path_length_target_survives_resume(cache_dir, tmp_path):
    """The phases' state (path-length target) is part of TrainState's checkpoint: a resumed run equals the
    straight one bit for bit, lazy phases included."""
    cfg = tiny("stylegan2", steps=8, loss={"r1_every": 4, "pl_every": 4, "style_mixing_prob": 0.5})
    straight = train(cfg, cache_dir, tmp_path / "a" / "run", tmp_path / "a" / "ckpt")
    cfg = cfg.replaced(train=dict(TRAIN, checkpoint_kimg=0.024))
    train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt", stop_after_kimg=0.024)
    resumed = train(cfg, cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt")
    assert resumed.steps == straight.steps
    a = torch.load(tmp_path / "a" / "run" / "G_ema.pt", weights_only=True)["G_ema"]
    b = torch.load(tmp_path / "b" / "run" / "G_ema.pt", weights_only=True)["G_ema"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert math.isfinite(straight.history[0].losses[G_PATH_LENGTH])


def test_ema_beta_is_zero_for_no_ema():
    assert step_values(model_settings("stylegan2", ema_kimg=0.0, ema_rampup=0.05, batch_size=8), 800).ema_beta == 0.0


def test_pggans_d_loss_is_the_official_wgan_gp_with_the_drift_at_its_official_weight():
    """progressive_growing_of_gans loss.py D_wgangp_acgan: D(fake) - D(real) + wgan_lambda * GP + wgan_epsilon *
    D(real)^2, wgan_epsilon = 0.001: what the study's PGGAN Dmain phase backpropagates, every part of it."""
    settings = model_settings("pggan", arch={"z_dim": 8, "fmap_base": 32, "fmap_max": 8})
    torch.manual_seed(0)
    G, D = models.build("pggan", settings.arch, 16)
    for net in (G, D):
        net.set_progress(2, 1.0)  # 16x16, faded in
    loss = gan_loss(G, D, settings.loss, progressive=True)
    (dmain,) = [phase for phase in build_phases(settings.loss) if phase.net == "D"]
    z, real = torch.randn(8, 8), torch.rand(8, 3, 16, 16) * 2 - 1
    ctx = StepContext(16, 0.0, torch.rand(8), 0.0)
    out = loss.phase_loss(dmain, z, real, ctx)
    terms = out.terms
    with torch.no_grad():
        real_logits, fake_logits = D(real), D(G(z))
    official = fake_logits.mean() - real_logits.mean() + 0.001 * real_logits.square().mean()
    drift = 0.001 * real_logits.square().mean()
    assert float(drift) > 1e-4 * abs(float(official))  # 10 times the tolerance below: dropping it shows
    total = out.total - terms[D_GRADIENT_PENALTY]
    assert total.item() == pytest.approx(official.item(), rel=1e-5)
