"""Device and precision choice from params, with one-line errors when the choice can't run here."""

from __future__ import annotations

import torch

from facegan.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible: set the device param to auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, official: str = "fp32") -> torch.dtype:
    """auto: the model's official precision (`models.ModelSpec.official_precision`) on CUDA, fp32 on CPU.
    fp32 models run in fp32; StyleGAN2/3 (official "fp16") run their num_fp16_res highest resolutions in fp16,
    the rest in fp32, with a GradScaler; R3GAN (official "bf16") runs its bf16_stages stages in bf16. fp32, fp16
    or bf16 asked for explicitly apply to any model (reduced precision is an opt-in lever); bf16 also runs on
    CPU (autocast), fp16 needs CUDA."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[official]
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            "train.precision=fp16 needs a CUDA GPU (its GradScaler is CUDA-only): use auto, fp32 or bf16 on CPU"
        )
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
