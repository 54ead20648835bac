"""DINOv2 features for FD-DINOv2, the protocol of Stein et al. 2023 ("Exposing flaws of generative model
evaluation metrics and their unfair treatment of diffusion models", NeurIPS; code: layer6ai-labs/dgm-eval).

Each uint8 image is resized to 224x224 with PIL's bicubic filter (dgm-eval's `pil_resize`), scaled to
[0, 1] and normalised with the ImageNet mean and std; the feature is the ViT-L/14's CLS token after its
final norm (1024 values). The Frechet distance of these features is FD-DINOv2, computed by the same code
as FID (facegan.metrics.fid), with its own real-vs-real floor.

`evaluate.dinov2`:
  official  timm's `vit_large_patch14_dinov2` holding Meta's checkpoint (`evaluate.dinov2_weights`,
            dinov2_vitl14_pretrain.pth, sha256-checked, downloaded there when absent and online; offline
            and absent is one line naming where to put it). timm's checkpoint filter drops the mask token
            and resamples the 518 px position embedding to 224 px once (bicubic), where dgm-eval's hub
            model interpolates it in every forward pass: the features have not been compared with
            dgm-eval's here (the file cannot be had on this machine)
  stand_in  a randomly initialised ViT of the architecture `evaluate.dinov2_stand_in` (seeded), at
            `evaluate.dinov2_input` px, its layer scales set to 1 (DINOv2 initialises them to 1e-5, which leaves
            an untrained CLS token blind to the image): the demo's offline stand-in (ViT-S/14 at 112 px, what 2
            cores afford),
            labelled "stand-in" wherever shown, never comparable with FD-DINOv2
  none      no DINOv2 features ("off" would be read by YAML as false)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from facegan import settings
from facegan.errors import UserError
from facegan.metrics import weights
from facegan.metrics.features import Extractor

INPUT = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_ARCH = "vit_large_patch14_dinov2"
STAND_IN_SEED = 2023


def resize_for_dinov2(images: np.ndarray, size: int = INPUT) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size): PIL bicubic to size, /255, ImageNet-normalised."""
    resized = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def vit(arch: str, size: int = INPUT) -> torch.nn.Module:
    """timm's DINOv2 ViT at `size` px input, returning the CLS token after the final norm."""
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0, global_pool="token", img_size=size)


def load_official(net: torch.nn.Module, path) -> None:
    """Meta's checkpoint (its own key names) into timm's ViT, through timm's filter for DINOv2 checkpoints."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(checkpoint_filter_fn(state, net), strict=True)


def build_dinov2(eval_params: settings.EvaluateSettings, device: torch.device) -> Extractor | None:
    """The DINOv2 extractor `evaluate.dinov2` asks for, or None for `none`."""
    if eval_params.dinov2 == "none":
        return None
    size = eval_params.dinov2_input
    if eval_params.dinov2 == "official":
        if size != INPUT:
            raise UserError(
                f"evaluate.dinov2=official runs dgm-eval's protocol at 224 px: "
                f"set evaluate.dinov2_input to 224, not {size}"
            )
        path = weights.resolve(eval_params.dinov2_weights, weights.DINOV2_VITL14)
        net, kind, source = vit(OFFICIAL_ARCH), "dinov2", str(path)
        load_official(net, path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STAND_IN_SEED)
            net = vit(eval_params.dinov2_stand_in, size)
        with torch.no_grad():  # DINOv2 starts its layer scales at 1e-5: untrained, the CLS token ignores the image
            for name, param in net.named_parameters():
                if name.endswith(("ls1.gamma", "ls2.gamma")):
                    param.fill_(1.0)
        kind, source = "dinov2_stand_in", ""
    net = net.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(device)).float()

    extractor = Extractor(kind, features, device, lambda images: resize_for_dinov2(images, size), weights=source)
    arch = eval_params.dinov2_stand_in if kind == "dinov2_stand_in" else OFFICIAL_ARCH
    extractor.note = f"{arch} at {size} px"
    return extractor
