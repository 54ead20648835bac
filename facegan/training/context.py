"""What one training run fixes at its start and every part of the loop reads: built once in `train`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import models
from facegan import handoff
from facegan.training import distributed
from facegan.training.phases import Phase
from facegan.training.progressive import Schedule


@dataclass(frozen=True)
class RunContext:
    cfg: handoff.ModelView  # the model's params, train params, seed and resolution
    spec: models.ModelSpec  # what the model is: style-based, progressive, its data space
    schedule: Schedule  # segments (levels, batch sizes, lrs) over images seen
    phases: list[Phase]  # Gmain/Greg/Dmain/Dreg (or Gboth/Dboth) in the model's official order
    world: distributed.World  # this process among the data-parallel ranks
    device: torch.device
    dtype: torch.dtype  # the precision the run resolved to
