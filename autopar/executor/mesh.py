"""The process group and the ``DeviceMesh`` of a plan: dims pp, dp, cp, tp (tp innermost)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autopar.executor.layout import MESH_DIMS


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_process_group() -> None:
    """Join the job's process group if not already in one (NCCL on GPUs, gloo on CPUs)."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_mesh(shape: tuple[int, int, int, int]) -> DeviceMesh:
    """The world as a 4-d mesh ``(pp, dp, cp, tp)``; rank = ((pp*dp + dp)*cp + cp)*tp + tp."""
    return init_device_mesh(device_type(), shape, mesh_dim_names=MESH_DIMS)


def replica_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The ranks whose gradients are averaged together: dp, or dp x cp flattened into one
    dimension (context-parallel ranks hold the same weights and see other tokens of the same
    samples, so their gradients are partial sums of the same batch's, like dp replicas')."""
    if mesh["cp"].size() == 1:
        return mesh["dp"]
    return mesh["dp", "cp"]._flatten("dp_cp")
