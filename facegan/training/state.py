"""Everything a training run carries from one step to the next, and its checkpoint.

`TrainState` holds the networks, optimizers, gradient scaler, path-length target, counters and
history; `checkpoint()` turns it into tensors and plain containers (so that `torch.load(...,
weights_only=True)` reads it back) together with every random generator's state, and `restore()`
puts a checkpoint back, so that a resumed run repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from facegan.training.loss import GanLoss


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss: GanLoss  # holds the path-length target, ADA's pipe (its p) and its tally of D's real signs
    step: int = 0  # optimizer steps taken (each runs every phase due at it)
    nimg: int = 0  # real images shown to D
    segment_index: int = -1  # the schedule segment the last step was in
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # handoff.HistoryRow fields, one per log interval
    segment_stats: dict[str, dict] = field(default_factory=dict)  # handoff.SegmentStats fields, per segment

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def checkpoint(self, **extra) -> dict:
        """Tensors and plain containers only; `extra` adds fields the loop wants recorded (segment, alpha)."""
        return {
            **{name: net.state_dict() for name, net in self.networks().items()},
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler": self.scaler.state_dict(),
            "pl_mean": self.loss.pl_mean.detach().cpu(),
            "real_signs": self.loss.real_signs.totals.cpu(),  # ADA's tally since its last update
            **({"augment_p": pipe.p.detach().cpu()} if (pipe := self.loss.augment_pipe) is not None else {}),
            "rng": rng_state(),
            "step": self.step,
            "nimg": self.nimg,
            "kimg": self.nimg / 1000,
            "segment_index": self.segment_index,
            "train_seconds": self.train_seconds,
            "history": json.dumps(self.history),
            "segment_stats": json.dumps(self.segment_stats),
            **extra,
        }

    def restore(self, state: dict, device: torch.device) -> None:
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss.pl_mean = state["pl_mean"].to(device)
        self.loss.real_signs.totals = state["real_signs"].to(device)
        if self.loss.augment_pipe is not None:
            self.loss.augment_pipe.p.copy_(state["augment_p"])
        set_rng_state(state["rng"])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.segment_index, self.train_seconds = int(state["segment_index"]), float(state["train_seconds"])
        self.history, self.segment_stats = json.loads(state["history"]), json.loads(state["segment_stats"])

    def account(self, segment: str, batch: int, seconds: float, device: torch.device) -> None:
        """Count a finished step: images, steps and time, overall and in its schedule segment."""
        self.nimg += batch
        self.step += 1
        self.train_seconds += seconds
        empty = {"seconds": 0.0, "nimg": 0, "steps": 0, "batch_size": batch, "peak_memory_bytes": None}
        stats = self.segment_stats.setdefault(segment, empty)
        stats["seconds"] += seconds
        stats["nimg"] += batch
        stats["steps"] += 1
        if device.type == "cuda":
            stats["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)

    def first_non_finite(self) -> str | None:
        """Name of the first parameter or buffer holding a NaN/inf, or None."""
        for net_name, net in self.networks().items():
            for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"{net_name}.{name}"
        return None


@dataclass
class TermLog:
    """Loss terms, time and images since the last history row; a lazy term averages over the steps it ran."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    nimg: int = 0

    def add_terms(self, steps: list[dict[str, float]]) -> None:
        """The terms of some steps (a lazy phase's terms appear only on the steps it ran)."""
        for terms in steps:
            for name, value in terms.items():
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1

    def count(self, seconds: float, nimg: int) -> None:
        self.seconds += seconds
        self.nimg += nimg

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in sorted(self.sums)}
