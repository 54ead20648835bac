"""DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016.

Components of the paper and where they live:
  - generator: z projected to a 4x4 feature map, then fractionally-strided (transposed) 4x4
    convolutions doubling the resolution, BatchNorm + ReLU in every layer but the output,
    tanh output                                                     -> DCGANGenerator
  - discriminator: strided 4x4 convolutions (no pooling), LeakyReLU(0.2), BatchNorm in every
    layer but the first, a single logit at 4x4                      -> DCGANDiscriminator
  - weights initialised from N(0, 0.02) (BatchNorm scale N(1, 0.02)) -> init_dcgan_weights
  - Adam lr 2e-4, beta1 0.5, non-saturating loss                    -> params.yaml models.dcgan
The paper's 64x64 network generalises to any power-of-two resolution by adding blocks; widths
double per block towards 4x4, capped at `max_channels`.
Training as PyTorch's DCGAN example (pytorch/examples dcgan/main.py): per iteration one latent batch,
D's step on reals and on G's fakes, then G's step scoring the same fakes with the updated D
(loss.latents per_step), Adam lr 2e-4 betas (0.5, 0.999), no flips, fp32, no EMA (G_ema is G).
tests/test_golden.py runs whole iterations of the loop against the example's own loop body holding
the same weights and draws (golden: verification/golden_dcgan.py).
Sampling: the example never leaves train mode, so it samples with each batch's BatchNorm statistics.
The study evaluates G_ema in eval mode with its BatchNorm statistics re-estimated for its own
weights over 16 batches of 64 fixed latents before every snapshot, grid and the final G_ema
(facegan.training.loop.refresh_batchnorm): the large-batch limit of the example's batch statistics,
and an image that does not depend on which other images share its batch (the report says so).
Deviations kept, with their reason:
  - batch 128 (the paper and Radford's code) where the example defaults to 64;
  - D returns logits and the loss is softplus (BCE on sigmoid outputs in the example: the same value);
  - G runs twice per iteration (D's step and G's step, from the same latents) where the example keeps
    the first forward: the same images and gradients; only BatchNorm's unused running statistics
    move twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from facegan import settings
from models import ModelSpec, register


def block_channels(resolution: int, base: int, cap: int) -> list[int]:
    """Channels at 4x4, 8x8, ..., resolution/2 for a net whose last block is `base` wide."""
    depth = int(math.log2(resolution)) - 2  # number of 2x steps from 4x4
    return [min(base * 2 ** (depth - 1 - i), cap) for i in range(depth)]


def init_dcgan_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, resolution: int, z_dim: int, g_channels: int, max_channels: int, img_channels: int = 3):
        super().__init__()
        self.z_dim, self.img_resolution, self.img_channels = z_dim, resolution, img_channels
        chans = block_channels(resolution, g_channels, max_channels)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False),  # 1x1 -> 4x4 projection
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], img_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        # DCGAN has no W space; truncation scales z towards its mean (0), the usual Z-space variant.
        return self.net((z * truncation_psi)[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    def __init__(self, resolution: int, d_channels: int, max_channels: int, img_channels: int = 3):
        super().__init__()
        chans = block_channels(resolution, d_channels, max_channels)[::-1]  # resolution/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(img_channels, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten()


def build(resolution: int, arch: settings.DcganArch) -> tuple[nn.Module, nn.Module]:
    return (
        DCGANGenerator(resolution, arch.z_dim, arch.g_channels, arch.max_channels),
        DCGANDiscriminator(resolution, arch.d_channels, arch.max_channels),
    )


SPEC = register(ModelSpec(name="dcgan", paper="Radford et al. 2016 (ICLR)", build=build))
