"""clean-fid's exact resize in worker processes, so that a GPU never waits for the CPU.

clean-fid's `clean` resize (PIL bicubic on each float32 channel) is the definition of the FID
input and must stay exactly as it is, but it runs on the CPU at ~2-3 ms an image: next to a GPU
that extracts thousands of features a second it is the bottleneck. `ResizePool` resizes uint8
batches in worker processes while the main process generates the next batches and runs the
network on the previous ones. Each worker writes its batch into its own slot of a ring buffer in
a memory-mapped file, so the ~1 MB of floats per image never crosses a pipe; only uint8 images
go to the workers. Batches keep their order and their composition, so features come out equal,
bit for bit, to those of the single-process path (tests/test_metrics.py).

On a CPU-only machine the network already uses every core through its threads and the resize is
~2% of the time, so `workers_for` gives no worker processes there.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the workers import this module: keep it free of the project's imports
    from facegan import settings

INCEPTION_SIZE = 299


def clean_resize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in [0, 255]: clean-fid's `clean` mode resize."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    out = np.empty((len(images), 3, INCEPTION_SIZE, INCEPTION_SIZE), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = np.asarray(resize(image), dtype=np.float32).transpose(2, 0, 1)
    return out


def _resize_into(path: str, shape: tuple, slot: int, images: np.ndarray) -> int:
    """Worker: resize `images` into slot `slot` of the ring buffer at `path`; returns the count."""
    ring = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
    ring[slot, : len(images)] = clean_resize(images)
    ring.flush()
    del ring
    return len(images)


def workers_for(requested: int, device: torch.device) -> int:
    """-1 (auto): every core but one next to a GPU, none on a CPU-only machine; else as asked."""
    if requested >= 0:
        return requested
    return max((os.cpu_count() or 1) - 1, 1) if device.type == "cuda" else 0


def resize_pool(eval_params: settings.EvaluateSettings, device: torch.device) -> contextlib.AbstractContextManager:
    """The worker processes that resize images for the Inception per the `evaluate` params (none on a
    CPU-only machine, none for the proxy network, whose own small resize runs in the main process)."""
    workers = workers_for(eval_params.resize_workers, device)
    if workers == 0 or eval_params.extractor == "proxy":
        return contextlib.nullcontext()
    return ResizePool(workers, eval_params.batch_size)


class ResizePool:
    """Ordered, bounded map of `clean_resize` over uint8 batches (of at most `batch_size` images)."""

    def __init__(self, workers: int, batch_size: int, slots_per_worker: int = 2):
        self.workers, self.batch_size = workers, batch_size
        self.slots = workers * slots_per_worker
        self.shape = (self.slots, batch_size, 3, INCEPTION_SIZE, INCEPTION_SIZE)
        self.dir = tempfile.TemporaryDirectory(prefix="facegan_resize_")
        self.path = str(Path(self.dir.name) / "ring.f32")
        self.ring = np.memmap(self.path, dtype=np.float32, mode="w+", shape=self.shape)
        # spawn, not fork: the parent may hold CUDA state, which a forked child must not inherit
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """Resized batches in input order. A yielded tensor is a view of the ring: use it (copy it to the
        device) before asking for the next one, which may reuse its slot."""
        pending: collections.deque = collections.deque()
        free = collections.deque(range(self.slots))
        source = iter(batches)
        exhausted = False
        while True:
            while free and not exhausted:
                images = next(source, None)
                if images is None:
                    exhausted = True
                    break
                if len(images) > self.batch_size:
                    raise ValueError(f"a batch of {len(images)} images exceeds the pool's {self.batch_size}")
                slot = free.popleft()
                pending.append((slot, self.pool.submit(_resize_into, self.path, self.shape, slot,
                                                       np.ascontiguousarray(images))))  # fmt: skip
            if not pending:
                return
            slot, future = pending.popleft()
            count = future.result()
            yield torch.from_numpy(np.asarray(self.ring[slot, :count]))
            free.append(slot)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        del self.ring
        self.dir.cleanup()

    def __enter__(self) -> ResizePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
