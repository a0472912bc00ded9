"""``autopar.parallelize``: apply a plan to a model on this rank, in one fixed order:
pipeline split -> tensor parallel -> context parallel -> activation recomputation -> FSDP ->
materialise -> DDP."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn

from autopar.executor.ac import apply_ac
from autopar.executor.amp import compute_dtype
from autopar.executor.cp import apply_cp
from autopar.executor.dp import apply_ddp, apply_fsdp, ddp_applies
from autopar.executor.layout import Layout, check_world, layout_of, meta_copy
from autopar.executor.materialise import InitWeights, materialise, sync_replicas
from autopar.executor.mesh import build_mesh, init_process_group, local_device, replica_mesh
from autopar.executor.parallel_model import ParallelModel
from autopar.executor.sp import shard_stage_boundaries
from autopar.executor.split import Chunk, inner_model, shared_copy
from autopar.executor.tp import apply_tp, sequence_parallel_applies, tied_modules
from autopar.plan import Plan
from autopar.tracing import ModelGraph


def parallelize(model: nn.Module, plan: Plan, *,
                init_weights: InitWeights | None = None,
                graph: ModelGraph | None = None, example_inputs: Any = None) -> ParallelModel:
    """Run ``model`` under ``plan`` on this rank of a ``torchrun`` job (or any initialised
    process group). ``model`` may live on the meta device: each rank then allocates only its
    own shards and initialises them with ``init_weights(module)`` or the modules'
    ``reset_parameters`` (see ``autopar.executor.materialise`` for what ``init_weights``
    receives); replicas are then broadcast from the first.

    ``graph`` (the model's trace) or ``example_inputs`` skip re-tracing / replace the plan's
    traced input shapes. Raises ``PlanMismatchError`` when the model or the world size is not
    the plan's.
    """
    init_process_group()
    check_world(plan, dist.get_world_size())
    layout = layout_of(model, plan, graph=graph, inputs=example_inputs)
    mesh = build_mesh(layout.mesh_shape)
    replicas = replica_mesh(mesh)
    device = local_device()
    config = layout.config
    pp_rank = mesh.get_local_rank("pp")
    chunk_ids = layout.chunks_of(pp_rank) if config.pp > 1 else [0]
    dtype = compute_dtype(plan.precision)
    fsdp = replicas.size() > 1 and config.zero_stage > 0
    autocast = None if fsdp else dtype  # FSDP's policy casts instead (dp.apply_fsdp)
    meta = meta_copy(model)
    tied = tied_modules(meta)
    parts: list[nn.Module] = []
    sp = (config.sequence_parallel and config.tp > 1
          and sequence_parallel_applies(meta, layout.layers, config.tp, tied))
    for c in chunk_ids:
        part: nn.Module
        if config.pp > 1:
            part = Chunk(shared_copy(model), layout.layers, layout.chunks[c], meta, device,
                         autocast=autocast)
            root = part.model
        else:
            part = root = model
        live = [layout.layers[i] for i in layout.chunks[c]]
        apply_tp(root, live, mesh["tp"], tied, sequence_parallel=sp)
        if sp and isinstance(part, Chunk):
            entry = None if part.entry is None else root.get_submodule(part.entry)
            shard_stage_boundaries(part, entry, mesh["tp"])
        apply_cp(root, mesh["cp"])
        apply_ac(root, live, config)
        if fsdp:
            apply_fsdp(part, live, replicas, config.zero_stage, plan.precision)
        if materialise(part, device, init_weights):
            sync_replicas(part, mesh)
        if replicas.size() > 1 and config.zero_stage == 0 and ddp_applies(config):
            part = apply_ddp(part, replicas, pipelined=config.pp > 1)
        parts.append(part)
    ties = _tied_groups(model, layout, mesh, parts, chunk_ids)
    pm = ParallelModel(parts, chunk_ids, layout, mesh, replicas, device, ties,
                       autocast=autocast)
    pm.tied_names = _tied_names(model)
    return pm


def _tied_names(model: nn.Module) -> list[list[str]]:
    """The names of each parameter that the model holds under more than one name (a tied
    embedding and head), for checkpoints that move between plans (``checkpoint``)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _tied_groups(model: nn.Module, layout: Layout, mesh: Any, parts: list[nn.Module],
                 chunk_ids: list[int]) -> list[tuple[list[nn.Parameter], dist.ProcessGroup]]:
    """Weights shared by layers on different pipeline ranks (a tied embedding and head): the
    process groups that sum their gradients, and this rank's copies of them."""
    config = layout.config
    if config.pp == 1:
        return []
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    result = []
    for group_names in names.values():
        if len(group_names) < 2:
            continue
        ranks = sorted({_chunk_of(layout, n) % config.pp for n in group_names} - {None})
        if len(ranks) < 2:
            continue
        mine = []
        for part in parts:
            params = dict(inner_model(part).named_parameters(remove_duplicate=False))
            mine += [params[k] for k in group_names if k in params]
        # every rank creates every group, in the same order
        mesh_ranks = mesh.mesh  # (pp, dp, cp, tp) tensor of global ranks
        for dp in range(config.dp):
            for cp in range(config.cp):
                for tp in range(config.tp):
                    members = [int(mesh_ranks[r, dp, cp, tp]) for r in ranks]
                    group = dist.new_group(members)
                    if dist.get_rank() in members and mine:
                        result.append((mine[:1], group))
    return result


def _chunk_of(layout: Layout, param: str) -> int:
    best, best_len = 0, -1
    for c, chunk in enumerate(layout.chunks):
        for i in chunk:
            layer = layout.layers[i]
            for m in [layer.name, *layer.modules]:
                if m and (param.startswith(m + ".")) and len(m) > best_len:
                    best, best_len = c, len(m)
    return best
