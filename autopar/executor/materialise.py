"""Materialise a meta-device model shard by shard: each rank allocates only the parameters and
buffers it holds (its tensor-parallel and FSDP shards, its pipeline chunks' layers) and
initialises them in place. No rank ever allocates the whole model.

``init_weights(module)`` (or, without it, every module's ``reset_parameters``) runs on this
rank's copy of the user's model after its tensors got uninitialised storage. A parameter is a
plain tensor (this rank holds all of it) or a ``DTensor`` whose ``to_local()`` is this rank's
shard; ``local_shard`` says which block of the full tensor that shard is, so an initialiser
that computes each element from its position gives every shard exactly its slice of the
full initialisation. Replicas are then made identical by broadcasting from the first one, so
an initialiser that draws from each rank's own random stream stays consistent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor._utils import (
    _get_shard_size_and_offsets,
    compute_local_shape_and_global_offset,
)
from torch.distributed.tensor.placement_types import _StridedShard

from autopar.executor.errors import ExecutorError
from autopar.executor.split import inner_model

InitWeights = Callable[[nn.Module], None]


def held_indices(tensor: DTensor, coordinate: list[int] | None = None) -> list[torch.Tensor]:
    """For each dimension, the indices into the full tensor of the local shard's rows along it,
    in local order, on the mesh coordinate ``coordinate`` (this rank's by default). A ``Shard``
    holds a range; a ``_StridedShard`` (a fused projection split by heads, ``tp``) holds a
    range of each of its parts."""
    mesh = tensor.device_mesh
    coord = mesh.get_coordinate() if coordinate is None else coordinate
    assert coord is not None
    held = [torch.arange(n) for n in tensor.shape]
    for dim, placement in enumerate(tensor.placements):
        if not isinstance(placement, Shard | _StridedShard):
            continue
        d = placement.dim
        size, offsets = _get_shard_size_and_offsets(len(held[d]), mesh.size(dim), coord[dim],
                                                    placement, held[d], tensor.shape[d], False)
        held[d] = offsets if size and offsets is not None else held[d][:0]
    return held


def held_blocks(tensor: DTensor, coordinate: list[int] | None = None
                ) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """The local shard of ``tensor`` (on ``coordinate``) as blocks of the full tensor: for each,
    where it lies in the local tensor and in the full tensor (one slice per dimension). One
    block for ``Shard`` placements; a ``_StridedShard`` of ``k`` parts makes ``k``."""
    runs_per_dim = []
    for index in held_indices(tensor, coordinate):
        runs: list[tuple[slice, slice]] = []
        start = 0
        for i in range(1, len(index) + 1):
            if i == len(index) or int(index[i]) != int(index[i - 1]) + 1:
                first = int(index[start])
                runs.append((slice(start, i), slice(first, first + i - start)))
                start = i
        runs_per_dim.append(runs)
    return [(tuple(r[0] for r in combo), tuple(r[1] for r in combo))
            for combo in itertools.product(*runs_per_dim)]


def local_shard(tensor: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[slice | torch.Tensor, ...]]:
    """This rank's part of a parameter or buffer, and where in the full tensor it lies: per
    dimension a slice, or, along the dimension of a fused projection split by heads (GPT-2's
    ``c_attn`` under tp: a slice of each of q, k and v), a tensor of the indices. Writing the
    local part writes the parameter."""
    if not isinstance(tensor, DTensor):
        return tensor, tuple(slice(0, n) for n in tensor.shape)
    if not any(isinstance(p, _StridedShard) for p in tensor.placements):
        shape, offset = compute_local_shape_and_global_offset(
            tensor.shape, tensor.device_mesh, tensor.placements)
        return tensor.to_local(), tuple(slice(o, o + n)
                                        for o, n in zip(offset, shape, strict=True))
    where: list[slice | torch.Tensor] = []
    for index in held_indices(tensor):
        contiguous = len(index) == 0 or int(index[-1]) - int(index[0]) == len(index) - 1
        where.append(slice(int(index[0]), int(index[0]) + len(index)) if contiguous and len(index)
                     else index)
    return tensor.to_local(), tuple(where)


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def _uninitialised(model: nn.Module) -> list[str]:
    """The types of the modules owning tensors that no ``reset_parameters`` would initialise,
    each with its first module's name and how many there are."""
    found: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        owns = (next(m.parameters(recurse=False), None) is not None
                or next(m.buffers(recurse=False), None) is not None)
        if owns and not callable(getattr(m, "reset_parameters", None)):
            found.setdefault(type(m).__name__, []).append(name or "<root>")
    return [f"{kind} ({names[0]}, {len(names)} in all)" for kind, names in found.items()]


def _tie_groups(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """The (module, attribute) slots holding the same parameter, for parameters held twice."""
    slots: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for key, p in m._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((m, key))
    return [group for group in slots.values() if len(group) > 1]


def materialise(part: nn.Module, device: torch.device, init_weights: InitWeights | None) -> bool:
    """Give a meta-device part storage on ``device`` (its local shards only) and initialise it;
    move any other part to ``device``. Returns whether it was materialised.

    ``Module.to_empty`` allocates each module's parameters separately, which would untie a
    weight shared by two modules (an embedding and its head): the first holder's tensor (the
    one ``named_parameters`` lists and FSDP tracks) is put back into every slot.
    """
    if not _on_meta(part):
        part.to(device)
        return False
    model = inner_model(part)
    if init_weights is None:
        missing = _uninitialised(model)
        if missing:
            raise ExecutorError(
                "the model is on the meta device and modules of these types own parameters or "
                f"buffers but have no reset_parameters: {', '.join(missing)}; pass "
                "init_weights= to autopar.parallelize (docs/executor.md says what it receives)")
    ties = _tie_groups(part)
    part.to_empty(device=device)
    for (owner, key), *others in ties:
        for module, name in others:
            module._parameters[name] = owner._parameters[key]
    with torch.no_grad():
        if init_weights is not None:
            init_weights(model)
        else:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
    return True


def sync_replicas(part: nn.Module, mesh: DeviceMesh) -> None:
    """Make every replica of a parameter or buffer equal to the first one: plain tensors over
    the dp, cp and tp dimensions, DTensors over their ``Replicate`` mesh dimensions."""
    for tensor in [*part.parameters(), *part.buffers()]:
        if isinstance(tensor, DTensor):
            groups = [tensor.device_mesh.get_group(d) for d, p in enumerate(tensor.placements)
                      if p.is_replicate() and tensor.device_mesh.size(d) > 1]
            local = tensor.to_local()
        else:
            groups = [mesh[d].get_group() for d in ("dp", "cp", "tp") if mesh[d].size() > 1]
            local = tensor
        for group in groups:
            _broadcast(local.detach(), group)


def _broadcast(tensor: torch.Tensor, group: dist.ProcessGroup) -> None:
    """Broadcast ``tensor`` in place from the group's first rank."""
    buffer = tensor.contiguous()
    dist.broadcast(buffer, group=group, group_src=0)
    if buffer.data_ptr() != tensor.data_ptr():
        tensor.copy_(buffer)
