"""Data parallelism: DDP for ZeRO-0, FSDP2 ``fully_shard`` for ZeRO 1-3, and the gradient
averaging DDP does, by hand, where DDP cannot wrap the model (tensor-parallel DTensors)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from autopar.config import ParallelConfig
from autopar.tracing import Layer

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def apply_fsdp(root: nn.Module, layers: list[Layer], mesh: DeviceMesh, zero_stage: int,
               precision: str) -> nn.Module:
    """Shard each live layer and then the root over the dp mesh. ZeRO-3 reshards parameters
    after forward; ZeRO-1/2 keep them gathered until backward (approximated by FSDP2)."""
    dtype = _DTYPES.get(precision)
    policy = (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
              if dtype is not None else MixedPrecisionPolicy())
    reshard = zero_stage == 3
    for layer in layers:
        try:
            module = root.get_submodule(layer.name)
        except AttributeError:
            continue
        if module is root or next(module.parameters(), None) is None or _shared(root, module):
            continue  # tied weights stay with the root's group
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
    return root


class StageDDP(DistributedDataParallel):
    """DDP for a pipeline stage: its forward never arms the reducer.

    ``torch.distributed.pipelining`` runs every micro-batch's forward under ``no_sync`` and
    arms the reducer itself (``reducer.prepare_for_backward``) just before the last
    micro-batch's backward. But the stage's metadata inference, on the first step, calls the
    module outside ``no_sync`` with gradients enabled: plain DDP then arms the reducer for a
    backward that never comes, and the next real backward (micro-batch 0's, under
    ``no_sync``, which only stops a forward from arming) all-reduces and records the
    gradient-ready order for the bucket rebuild. Under 1F1B a forward runs before the
    armed last backward and rebuilds the buckets (one extra all-reduce, still correct);
    under GPipe all backwards follow all forwards, the last one records the order a second
    time, and the next forward's bucket rebuild fails ("rebuilt parameter indices size is
    not same as original model parameters size"). Running every forward under ``no_sync``
    leaves arming to the schedule alone.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.no_sync():
            return super().forward(*args, **kwargs)


def ddp_applies(config: ParallelConfig) -> bool:
    """Whether DDP can average ZeRO-0 gradients; where not, ``average_grads`` does it after
    the step. DDP cannot wrap tensor-parallel DTensors, and its reducer cannot see the
    zero-bubble schedule's weight gradients: ``torch.distributed.pipelining`` computes them
    with ``torch.autograd.grad`` and adds them to ``.grad`` by hand, so no gradient hook
    fires, nothing is all-reduced, and replicas would train on their own micro-batches
    alone."""
    return config.tp == 1 and not (config.pp > 1 and config.schedule == "zero_bubble")


def apply_ddp(root: nn.Module, mesh: DeviceMesh, pipelined: bool = False) -> nn.Module:
    """Wrap ``root`` in ``DistributedDataParallel`` over the dp group (``StageDDP`` for a
    pipeline stage, whose schedule decides when gradients are reduced)."""
    cls = StageDDP if pipelined else DistributedDataParallel
    return cls(root, process_group=mesh.get_group())


def average_grads(params: Iterable[nn.Parameter], group: dist.ProcessGroup, size: int) -> None:
    """Average gradients over ``group`` (what DDP does), one flat all-reduce."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        grads.append(g.to_local() if isinstance(g, DTensor) else g)
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def sum_grads(params: Iterable[nn.Parameter], group: dist.ProcessGroup) -> None:
    """Sum gradients over ``group``: a weight tied across pipeline stages."""
    for p in params:
        if p.grad is not None:
            g = p.grad
            dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=group)


def _shared(root: nn.Module, module: nn.Module) -> bool:
    """Whether ``module`` uses a parameter that modules outside it use too."""
    inside = {id(p) for p in module.parameters()}
    outside = {id(p) for m in root.modules() if m is not module
               and not any(m is sub for sub in module.modules())
               for p in m.parameters(recurse=False)}
    return bool(inside & outside)
