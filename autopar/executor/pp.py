"""Pipeline stages and the plan's schedule, from ``torch.distributed.pipelining``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleLoopedBFS,
)

from autopar.config import ParallelConfig


def build_stages(modules: list[nn.Module], indices: list[int], num_stages: int,
                 device: torch.device, mesh: DeviceMesh) -> list[PipelineStage]:
    """One ``PipelineStage`` per chunk this rank runs."""
    return [PipelineStage(m, i, num_stages, device, group=mesh.get_group())
            for m, i in zip(modules, indices, strict=True)]


def build_schedule(stages: list[PipelineStage], config: ParallelConfig, microbatches: int,
                   loss_fn: Callable[..., torch.Tensor]
                   ) -> PipelineScheduleSingle | PipelineScheduleMulti:
    """The plan's schedule: GPipe, 1F1B, interleaved 1F1B or interleaved zero-bubble (a
    single chunk per rank runs 1F1B under the two interleaved names)."""
    if len(stages) == 1 and config.schedule != "zero_bubble":
        single: Any = ScheduleGPipe if config.schedule == "gpipe" else Schedule1F1B
        return single(stages[0], n_microbatches=microbatches, loss_fn=loss_fn)
    multi: Any = {"gpipe": ScheduleLoopedBFS, "1f1b": ScheduleInterleaved1F1B,
                  "interleaved": ScheduleInterleaved1F1B,
                  "zero_bubble": ScheduleInterleavedZeroBubble}[config.schedule]
    return multi(stages, n_microbatches=microbatches, loss_fn=loss_fn)
