"""Data-parallel training over torch.distributed: the same command on 1..N GPUs.

`torchrun --nproc_per_node=N -m stages.train <model>` sets RANK/WORLD_SIZE/LOCAL_RANK; without
them the run is a single process. Each rank takes every N-th sample of the global batch (so the
minibatch-stddev groups of D are the ones a single process forms), computes its gradients, and
the gradients are averaged over ranks before every optimiser step, as StyleGAN2-ADA's training
loop does. DDP's module wrapper is not used because progressive models leave whole blocks unused
at low resolutions and the gradient penalties need double backward, both of which the wrapper
handles only with find_unused_parameters and extra passes; averaging the gradients by hand is
exactly what it would compute. Only rank 0 writes files. NCCL on CUDA, gloo on CPU (tests).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facegan.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's samples of a global batch: every size-th one from rank."""
        return tensor[self.rank :: self.size] if self.active else tensor

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.size

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Average .grad over ranks for the parameters that have one (the same set on every rank)."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if not self.active:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env(device_param: str) -> World:
    """A World from torchrun's environment (single process when WORLD_SIZE is unset or 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_param != "cpu" and torch.cuda.is_available()
    if device_param == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible: set the device param to auto or cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are visible: "
                f"lower torchrun --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return World(rank, size, local_rank)


def device_for(world: World, device: torch.device) -> torch.device:
    if device.type == "cuda" and world.active:
        return torch.device("cuda", world.local_rank)
    return device


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
