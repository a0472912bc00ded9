"""Sharded checkpoints with ``torch.distributed.checkpoint``: each rank writes its own shards of
the model and optimizer, named by parameter (flattened optimizer state), so a checkpoint written
under one plan loads under another with different degrees.

DCP writes a ``DTensor`` shard as one block of the full tensor. A fused projection split by
heads (GPT-2's ``c_attn`` under tp, placement ``_StridedShard``) holds one block of each of
its q, k and v parts: such values are handed to DCP as a ``ShardedTensor`` with one local
shard per block (``_as_blocks``), so the checkpoint holds the full tensor's values in its own
layout, whatever plan wrote or reads it."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import (
    Shard,
    ShardedTensor,
    ShardedTensorMetadata,
    TensorProperties,
)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.placement_types import _StridedShard

from autopar.executor.errors import CheckpointError
from autopar.executor.materialise import held_blocks
from autopar.executor.parallel_model import Optimizers, ParallelModel

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _parts_state(pm: ParallelModel, optimizers: Optimizers | None) -> list[dict[str, Any]]:
    states = []
    for i, module in enumerate(pm.modules()):
        state: dict[str, Any] = {f"model.{k}": v for k, v in
                                 get_model_state_dict(module, options=_OPTIONS).items()}
        if optimizers is not None:
            opt = get_optimizer_state_dict(module, optimizers.optimizers[i], options=_OPTIONS)
            state.update({f"optim.{k}": v for k, v in opt.items()})
        states.append(state)
    return states


def _with_aliases(state: dict[str, Any], tied: list[list[str]]) -> dict[str, Any]:
    """``state`` with each tied parameter's entries (weights, optimizer state and parameter
    group) also under its other names. A plan without pipeline stages holds a tied embedding
    and head as one parameter under its first name; under pp the stage of the head holds it
    under the head's name: a checkpoint holding both loads under either."""
    aliases = {name: [o for o in group if o != name] for group in tied for name in group}
    extra: dict[str, Any] = {}
    for key, value in state.items():
        for prefix in ("model.", "optim.state.", "optim.param_groups."):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            for name, others in aliases.items():
                if rest == name or rest.startswith(name + "."):
                    for other in others:
                        extra.setdefault(prefix + other + rest[len(name):], value)
    return {**extra, **state}


def _strided(value: Any) -> bool:
    return isinstance(value, DTensor) and any(isinstance(p, _StridedShard)
                                              for p in value.placements)


def _as_blocks(value: DTensor) -> ShardedTensor:
    """A DTensor whose local shard is several blocks of the full tensor, as a ``ShardedTensor``
    with one local shard (a copy) per block. Its metadata lists the blocks of every rank of the
    DTensor's mesh that shares this rank's coordinates along the unsharded mesh dimensions
    (replicas write the same blocks, which DCP deduplicates)."""
    mesh = value.device_mesh
    mine = mesh.get_coordinate()
    assert mine is not None
    sharded = [d for d, p in enumerate(value.placements)
               if p.is_shard() or isinstance(p, _StridedShard)]
    ranges = [range(mesh.size(d)) if d in sharded else [mine[d]] for d in range(mesh.ndim)]
    device = value.to_local().device
    local = value.to_local()
    metadata, shards = [], []
    for point in itertools.product(*ranges):
        coord = list(point)
        rank = int(mesh.mesh[point])
        for where, block in held_blocks(value, coord):
            md = ShardMetadata(shard_offsets=[b.start for b in block],
                               shard_sizes=[b.stop - b.start for b in block],
                               placement=f"rank:{rank}/{device}")
            metadata.append(md)
            if coord == list(mine):
                shards.append(Shard(local[where].detach().contiguous(), md))
    props = TensorProperties(dtype=local.dtype, layout=local.layout,
                             requires_grad=False, memory_format=torch.contiguous_format,
                             pin_memory=False)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        shards, ShardedTensorMetadata(metadata, value.shape, props))


def _from_blocks(blocks: ShardedTensor, value: DTensor) -> None:
    """Copy what DCP read into ``blocks`` back into the local shard of ``value``."""
    local = value.to_local()
    mine = value.device_mesh.get_coordinate()
    assert mine is not None
    for (where, _), shard in zip(held_blocks(value, list(mine)), blocks.local_shards(),
                                 strict=True):
        local[where].copy_(shard.tensor)


def save(pm: ParallelModel, optimizers: Optimizers | None, path: str | os.PathLike[str],
         *, step: int = 0) -> None:
    """Write this rank's shards (a collective: call on every rank)."""
    state: dict[str, Any] = {"step": step}
    for part in _parts_state(pm, optimizers):
        state.update(part)
    state = _with_aliases(state, pm.tied_names)
    state = {k: _as_blocks(v) if _strided(v) else v for k, v in state.items()}
    dcp.save(state, checkpoint_id=str(path))
    dist.barrier()
    if dist.get_rank() == 0:
        Path(path, "COMPLETE").write_text(str(step))
    dist.barrier()


def load(pm: ParallelModel, optimizers: Optimizers | None, path: str | os.PathLike[str]) -> int:
    """Read the shards this rank needs under its own plan; returns the saved step."""
    if not Path(path, "COMPLETE").exists():
        raise CheckpointError(f"no complete checkpoint at {path}")
    parts = _parts_state(pm, optimizers)
    state: dict[str, Any] = {"step": 0}
    for part in parts:
        state.update(part)
    strided = {k: v for k, v in state.items() if _strided(v)}
    state.update({k: _as_blocks(v) for k, v in strided.items()})
    try:
        dcp.load(state, checkpoint_id=str(path))
    # DCP raises plain errors for missing keys and wrong shapes, wrapped (across ranks) in
    # CheckpointException, which derives from BaseException.
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from exc
    for key, value in strided.items():
        _from_blocks(state[key], value)
        state[key] = value
    for i, (module, part) in enumerate(zip(pm.modules(), parts, strict=True)):
        model = {k[len("model."):]: state[k] for k in part if k.startswith("model.")}
        set_model_state_dict(module, model, options=_OPTIONS)
        if optimizers is not None:
            optim = {k[len("optim."):]: state[k] for k in part if k.startswith("optim.")}
            set_optimizer_state_dict(module, optimizers.optimizers[i], optim, options=_OPTIONS)
    return int(state["step"])


def latest(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step-N`` checkpoint under ``root`` (None if there is none)."""
    done = [p for p in Path(root).glob("step-*") if (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)
