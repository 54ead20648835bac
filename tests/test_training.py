"""The shared training loop: growing schedule, resume, data-parallel equivalence, NaN stop."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from cleanfid.fid import frechet_distance

import models
from facegan import checkpoint
from facegan.data.cache import CacheWriter
from facegan.data.synthetic import render_face
from facegan.device import resolve_precision
from facegan.errors import UserError
from facegan.handoff import ModelView
from facegan.training import loss as training_loss
from facegan.training.loop import NonFiniteError, train
from facegan.training.progressive import Schedule, growing_kimg, prepare_reals
from tests.helpers import TINY_R3GAN_ARCH, cpu_train, model_settings, study_model

torch.set_num_threads(1)  # tiny nets: one thread is fastest, and the suite shares 2 cores

TRAIN = cpu_train(checkpoint_kimg=0.032, snapshot_kimg=0.064, sample_kimg=0.064)
PGGAN = study_model(
    "pggan",
    kimg=0.192,
    batch_size=8,
    ema_kimg=0.01,
    arch={"z_dim": 8, "fmap_base": 32, "fmap_max": 8},
    progressive={"stable_kimg": [0.032], "fade_kimg": [0.032], "batch_sizes": []},
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    writer = CacheWriter(root / "faces", 16, 24)
    for i in range(24):
        writer.add(render_face(0, i, 16))
    return writer.finish(source="synthetic", synthetic=True)


def config(resolution=16, **changes) -> ModelView:
    from facegan.params import deep_merge

    return ModelView.selected_run(
        model="pggan", params=deep_merge(PGGAN, changes), train=dict(TRAIN), seed=3, resolution=resolution
    )


def g_ema(run_dir):
    return checkpoint.load(run_dir / "G_ema.pt")["G_ema"]


def growing(kimg: float, batch_size: int = 16, **progressive):
    return model_settings("pggan", kimg=kimg, batch_size=batch_size, progressive=progressive)


def test_schedule_visits_every_resolution_with_fade_ins():
    params = growing(16.0, stable_kimg=[1.0, 2.0], fade_kimg=[1.5], batch_sizes=[64, 32])
    sched = Schedule.progressive("pggan", params, 4)
    names = ["train4", "fade8", "train8", "fade16", "train16", "fade32", "train32", "fade64", "train64"]
    assert [s.name for s in sched.segments] == names
    assert [s.batch_size for s in sched.segments] == [64] + [32] * 8
    assert sched.segments[0].end_nimg == 1000 and sched.segments[2].end_nimg - sched.segments[2].start_nimg == 2000
    fade = sched.segments[1]
    assert fade.alpha(fade.start_nimg) == 0 and fade.alpha((fade.start_nimg + fade.end_nimg) // 2) == 0.5
    assert sched.total_nimg == 16_000 and sched.segment_at(15_999).name == "train64"
    assert sched.segments[-1].start_nimg == 13_000
    with pytest.raises(UserError, match="raise kimg"):
        Schedule.progressive("pggan", growing(5.0, stable_kimg=[1.0], fade_kimg=[1.0], batch_sizes=[]), 4)


def test_stylegan_schedule_starts_at_8x8_with_the_official_per_resolution_learning_rates():
    """Official StyleGAN: lod_initial_resolution 8, G/D_lrate_dict {128: 0.0015}, base 0.001; the batch
    size and lr of a fade-in are those of the level fading in."""
    params = model_settings("stylegan", kimg=20.0, progressive={"stable_kimg": [1.0], "fade_kimg": [1.0]})
    sched = Schedule.progressive("stylegan", params, 5)  # 128x128
    assert sched.segments[0].name == "train8" and sched.segments[0].batch_size == 128
    by_name = {s.name: s for s in sched.segments}
    assert by_name["train64"].lr_g == by_name["train64"].lr_d == 0.001
    assert by_name["fade128"].lr_g == by_name["train128"].lr_d == 0.0015
    assert by_name["fade128"].batch_size == by_name["train128"].batch_size == 16
    assert growing_kimg(params.progressive, 5) == 4 * 1.0 + 4 * 1.0  # train 8..64, fade into 16..128


def test_reals_are_pooled_and_faded_like_the_generator():
    img = torch.randn(2, 3, 16, 16)
    pooled = torch.nn.functional.avg_pool2d(img, 2)
    assert torch.equal(prepare_reals(img, 8, 1.0), pooled)
    low = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(pooled, 2), scale_factor=2)
    assert torch.allclose(prepare_reals(img, 8, 0.0), low)
    assert torch.allclose(prepare_reals(img, 8, 0.5), (low + pooled) / 2, atol=1e-6)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: CPU autocast
    assert resolve_precision("auto", torch.device("cuda"), "bf16") == torch.bfloat16  # R3GAN's official stages
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


def test_grows_through_every_resolution_and_resumes_to_identical_weights(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dvclive looks for a DVC repo from the working directory: none here
    straight = train(
        config(), cache_dir, tmp_path / "a" / "run", tmp_path / "a" / "ckpt", live_dir=tmp_path / "a" / "live"
    )
    assert straight is not None
    assert [p.segment for p in straight.schedule] == ["train4", "fade8", "train8", "fade16", "train16"]
    assert set(straight.segments) == {"train4", "fade8", "train8", "fade16", "train16"}
    assert straight.training_phases == ["Dmain", "Gmain"]  # WGAN-GP is not lazy; official PGGAN: D first
    grids = sorted(p.name for p in (tmp_path / "a" / "run" / "samples").glob("*.png"))
    assert {g[:7] for g in grids} == {"res0004", "res0008", "res0016"}, grids
    # train.snapshot_level_ends: the last weights of 4x4 (0.032 kimg) and 8x8 (0.096), between the 0.064-kimg ones,
    # so that FID per resolution has a point at every level's end
    snapshots = {p.name: checkpoint.load(p) for p in (tmp_path / "a" / "run" / "snapshots").glob("*.pt")}
    assert int(snapshots["kimg00000.03.pt"]["level"]) == 0 and int(snapshots["kimg00000.10.pt"]["level"]) == 1
    alphas = [h.alpha for h in straight.history if h.segment == "fade16"]
    assert alphas == sorted(alphas) and 0 < alphas[0] < 1
    live = tmp_path / "a" / "live" / "plots" / "metrics"
    assert {"D/adversarial.tsv", "G/adversarial.tsv", "alpha.tsv", "level.tsv", "img_per_s.tsv", "kimg.tsv"} <= {
        str(p.relative_to(live)) for p in live.rglob("*.tsv")
    }

    # interrupted in the middle of the 16x16 fade-in, then resumed
    stopped = train(config(), cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt", stop_after_kimg=0.112)
    assert stopped is None and not (tmp_path / "b" / "run").exists()
    state = checkpoint.load(next((tmp_path / "b" / "ckpt").rglob("last.pt")))
    assert state["segment"] == "fade16" and 0 < float(state["alpha"]) < 1
    resumed = train(config(), cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt")
    assert resumed is not None and resumed.steps == straight.steps
    a, b = g_ema(tmp_path / "a" / "run"), g_ema(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, cache_dir, root):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    train(cfg, cache_dir, root / "run", root / "ckpt")


def test_two_process_gloo_run_matches_one_process(cache_dir, tmp_path):
    cfg = config(
        resolution=16,
        kimg=0.064,
        progressive={"stable_kimg": [0.008], "fade_kimg": [0.008], "batch_sizes": [], "reset_optimizer": True},
    )
    train(cfg, cache_dir, tmp_path / "one" / "run", tmp_path / "one" / "ckpt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, cache_dir, tmp_path / "two"), nprocs=2, join=True)
    one, two = g_ema(tmp_path / "one" / "run"), g_ema(tmp_path / "two" / "run")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key
    assert not list((tmp_path / "two" / "ckpt").rglob("*.pt"))  # rank 0 moved the finished run out


@pytest.mark.parametrize("log_kimg, check_every", [(0.016, 16), (100.0, 1000)])
def test_a_nan_loss_stops_with_step_and_last_good_checkpoint(cache_dir, tmp_path, monkeypatch, log_kimg, check_every):
    """The finiteness check needs a host sync, so it runs every train.speed.check_every steps, but always before
    a history row and a checkpoint: with rare checks the NaN of step 6 is still caught before step 8's checkpoint."""
    calls = {"n": 0}
    real_loss = training_loss.d_adversarial

    def poisoned(kind, real_logits, fake_logits):
        calls["n"] += 1
        value = real_loss(kind, real_logits, fake_logits)
        return value * float("nan") if calls["n"] > 6 else value

    monkeypatch.setattr(training_loss, "d_adversarial", poisoned)
    with pytest.raises(
        NonFiniteError, match=r"D/adversarial is not finite at step 6 \(last good checkpoint: .*last\.pt\)"
    ):
        cfg = config()
        train_params = cfg.train.model_dump()
        train_params["log_kimg"], train_params["speed"]["check_every"] = log_kimg, check_every
        cfg = cfg.replaced(train=train_params)
        train(cfg, cache_dir, tmp_path / "run", tmp_path / "ckpt")
    state = checkpoint.load(next((tmp_path / "ckpt").rglob("last.pt")))
    assert state["step"] == 4  # checkpoint_kimg 0.032 = every 4 steps of 8
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(t).all() for t in state[net].values() if t.is_floating_point())
    assert not (tmp_path / "run").exists()


def _with_speed(cfg: ModelView, **speed) -> ModelView:
    train_params = cfg.train.model_dump()
    return cfg.replaced(train={**train_params, "speed": {**train_params["speed"], **speed}})


def test_channels_last_trains_the_same_networks(cache_dir, tmp_path):
    """train.speed.channels_last is a memory layout, not a change of model: the same run in NHWC ends at the
    weights the NCHW run reaches (up to the rounding of other conv kernels)."""
    train(config(), cache_dir, tmp_path / "nchw", tmp_path / "c1")
    train(_with_speed(config(), channels_last=True), cache_dir, tmp_path / "nhwc", tmp_path / "c2")
    nchw, nhwc = g_ema(tmp_path / "nchw"), g_ema(tmp_path / "nhwc")
    assert nchw.keys() == nhwc.keys()
    for key in nchw:
        torch.testing.assert_close(nhwc[key].contiguous(), nchw[key], atol=1e-4, rtol=1e-3, msg=key)


def test_cuda_graphs_without_cuda_is_a_one_line_error(cache_dir, tmp_path):
    with pytest.raises(UserError, match="compile=cudagraphs needs a CUDA device.*set train.speed.compile to default"):
        train(_with_speed(config(), compile="cudagraphs"), cache_dir, tmp_path / "run", tmp_path / "ckpt")


def _pixel_frechet(images: np.ndarray, G, z_dim: int) -> float:
    """Frechet distance between Gaussians fitted to real and generated 4x4x3 pixel vectors."""
    with torch.no_grad():
        fake = G(torch.randn(1024, z_dim, generator=torch.Generator().manual_seed(0))).flatten(1).numpy()
    return float(
        frechet_distance(images.mean(0), np.cov(images, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    )


def test_pggan_learns_the_4x4_faces(tmp_path, monkeypatch):
    """The whole loop (WGAN-GP, drift, Adam, EMA) must move G towards the data: at 4x4 a face is a
    uniform background ring around a skin-coloured centre, which an untrained G (independent
    per-pixel colours) is far from. 400 steps at the demo's lr (measured: distance 39 -> 1.7;
    real-vs-real floor 0.35; with G's loss sign flipped it grows instead)."""
    monkeypatch.chdir(tmp_path)
    writer = CacheWriter(tmp_path / "faces", 4, 256)
    for i in range(256):
        writer.add(
            np.round(render_face(0, i, 16).astype(np.float32).reshape(4, 4, 4, 4, 3).mean((1, 3))).astype(np.uint8)
        )
    cache = writer.finish(source="synthetic", synthetic=True)
    from facegan.params import deep_merge

    params = deep_merge(
        PGGAN,
        dict(
            kimg=6.4,
            batch_size=16,
            lr_g=0.005,
            lr_d=0.005,
            ema_kimg=0.2,
            arch={"z_dim": 32, "fmap_base": 64, "fmap_max": 32, "mbstd_group_size": 4},
        ),
    )
    run = ModelView.selected_run(
        model="pggan",
        params=params,
        seed=3,
        resolution=4,
        train=dict(
            TRAIN, checkpoint_kimg=100.0, snapshot_kimg=100.0, sample_kimg=100.0, log_kimg=1.0, deterministic=False
        ),
    )
    train(run, cache, tmp_path / "run", tmp_path / "ckpt")
    reals = (np.load(cache / "faces.npy").transpose(0, 3, 1, 2) / 127.5 - 1).reshape(256, -1)
    torch.manual_seed(0)
    G, _ = models.build("pggan", params["arch"], 4)
    before = _pixel_frechet(reals, G, 32)
    G.load_state_dict(g_ema(tmp_path / "run"))
    after = _pixel_frechet(reals, G, 32)
    assert after < 0.15 * before and after < 4.0, (before, after)


def test_growing_kimg_is_where_the_last_train_segment_starts():
    params = growing(40.0, 8, stable_kimg=[16, 4, 2], fade_kimg=[2, 1], batch_sizes=[])
    schedule = Schedule.progressive("pggan", params, 4)
    assert schedule.segments[-1].name == "train64"
    assert schedule.segments[-1].start_nimg == round(growing_kimg(params.progressive, 4) * 1000) == 29000


R3GAN = study_model(
    "r3gan",
    kimg=0.064,
    batch_size=8,
    ema_kimg=0.016,
    augment={"p": 0.5},
    cosine={"decay_kimg": 0.048},  # every schedule moves within the run, and ends before it
    arch=TINY_R3GAN_ARCH,
)


def test_r3gan_resumed_mid_schedule_ends_with_the_uninterrupted_weights(cache_dir, tmp_path, monkeypatch):
    """R3GAN's lr, beta2, gamma, EMA length and p follow its cosine from the images seen, so a run stopped
    half-way and resumed trains the same networks, and its schedules reach their ends."""
    monkeypatch.chdir(tmp_path)

    def cfg():
        return ModelView.selected_run(model="r3gan", params=R3GAN, train=dict(TRAIN), seed=3, resolution=16)

    straight = train(cfg(), cache_dir, tmp_path / "a" / "run", tmp_path / "a" / "ckpt")
    assert straight.training_phases == ["Dboth", "Gmain"]
    assert {"D/adversarial", "D/r1", "D/r2", "G/adversarial"} <= set(straight.history[-1].losses)
    assert straight.augment == "cosine" and straight.augment_p == pytest.approx(0.5)  # the schedule's end
    assert straight.ema_kimg == pytest.approx(0.016)
    assert train(cfg(), cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt", stop_after_kimg=0.032) is None
    resumed = train(cfg(), cache_dir, tmp_path / "b" / "run", tmp_path / "b" / "ckpt")
    assert resumed.steps == straight.steps
    a, b = g_ema(tmp_path / "a" / "run"), g_ema(tmp_path / "b" / "run")
    for key in a:
        assert torch.equal(a[key], b[key]), key


DCGAN = study_model(
    "dcgan", kimg=0.128, batch_size=8, arch={"z_dim": 8, "g_channels": 8, "d_channels": 8, "max_channels": 32}
)


def test_dcgan_samples_as_the_example_does_with_batch_statistics_of_its_own_weights(cache_dir, tmp_path, monkeypatch):
    """PyTorch's DCGAN example samples in train mode: each BatchNorm normalises by the batch's own statistics.
    The study's G_ema samples in eval mode, with running statistics re-estimated for its final weights (the
    cumulative average over 16 batches of 64), so the saved G_ema and its last snapshot draw in eval mode what
    they draw in train mode with a large batch. Without the re-estimation (G's statistics of past weights) or
    with it at momentum 0.1 (18.5 % of the reset's 0 and 1 left after 16 batches) the images move by 0.046-0.052
    on average here; re-estimated, by 0.0009."""
    monkeypatch.chdir(tmp_path)
    cfg = ModelView.selected_run(model="dcgan", params=DCGAN, train=dict(TRAIN), seed=3, resolution=16)
    run_dir = tmp_path / "run"
    train(cfg, cache_dir, run_dir, tmp_path / "ckpt")
    snapshots = sorted((run_dir / "snapshots").glob("kimg*.pt"))
    assert snapshots, "no snapshot written"
    z = torch.randn(1024, DCGAN["arch"]["z_dim"], generator=torch.Generator().manual_seed(1))
    for weights in (g_ema(run_dir), checkpoint.load(snapshots[-1])["G_ema"]):
        G, _ = models.build("dcgan", DCGAN["arch"], 16)
        G.load_state_dict(weights)
        with torch.no_grad():
            eval_images, batch_statistics_images = G.eval()(z), G.train()(z)
        assert (eval_images - batch_statistics_images).abs().mean() < 0.01
