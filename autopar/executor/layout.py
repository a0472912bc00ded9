"""What the executor needs from a plan, derived from ``plan.config`` and a trace of the model.

Plans do not (yet) carry their mesh and per-module sharding, so this adapter recomputes them:
the layers come from ``autopar.trace`` of a meta copy of the model, the pipeline chunks from
``ParallelConfig.stage_layers`` (chunk ``c`` runs on pipeline rank ``c % pp``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autopar.config import ParallelConfig
from autopar.estimate import repeated_blocks
from autopar.executor.cp import check_cp
from autopar.executor.errors import ExecutorError, PlanMismatchError
from autopar.plan import Plan
from autopar.tracing import Layer, ModelGraph, trace

MESH_DIMS = ("pp", "dp", "cp", "tp")


@dataclass(frozen=True)
class Layout:
    """The plan's config and the model's layers, split into pipeline chunks."""

    config: ParallelConfig
    layers: list[Layer]
    chunks: list[range]
    """Graph layers of each pipeline chunk, in model order."""
    global_batch_size: int

    @property
    def mesh_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return (c.pp, c.dp, c.cp, c.tp)

    def chunks_of(self, pp_rank: int) -> list[int]:
        """The chunks pipeline rank ``pp_rank`` runs (``c % pp == pp_rank``)."""
        return [c for c in range(len(self.chunks)) if c % self.config.pp == pp_rank]


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device, without copying any parameter data."""
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def example_inputs(model: nn.Module, plan: Plan) -> tuple[torch.Tensor, ...]:
    """Meta inputs of the plan's traced shapes: token ids for models that start with an
    embedding, floats of the parameters' dtype otherwise."""
    shapes = plan.model.get("input_shapes")
    if not isinstance(shapes, list) or not shapes:
        raise ExecutorError("the plan's model fingerprint has no input_shapes; pass "
                            "example_inputs= to autopar.parallelize")
    first = next((m for m in model.modules() if not list(m.children())), None)
    token_ids = isinstance(first, nn.Embedding)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return tuple(torch.zeros(tuple(s), dtype=torch.long if token_ids else dtype, device="meta")
                 for s in shapes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_model(model: nn.Module, graph: ModelGraph, plan: Plan) -> None:
    """Refuse a model that is not the one the plan was made for, naming each difference."""
    want = plan.model
    have = {"name": type(model).__name__, "parameters": count_params(model),
            "layers": len(graph.layers)}
    diffs = [f"{key}: plan has {want[key]!r}, model has {have[key]!r}"
             for key in ("name", "parameters", "layers") if key in want and want[key] != have[key]]
    if diffs:
        raise PlanMismatchError("the plan was made for another model (" + "; ".join(diffs)
                                + "); plan this model with `autopar plan`")


def check_world(plan: Plan, world_size: int) -> None:
    """Refuse a job whose process count is not the plan's."""
    need = plan.config.world_size
    if plan.world_size != need:
        raise PlanMismatchError(f"the plan is inconsistent: world_size {plan.world_size} but its "
                                f"config uses dp*tp*pp*cp = {need} devices")
    if world_size != need:
        raise PlanMismatchError(
            f"the plan needs {need} processes (dp={plan.config.dp} tp={plan.config.tp} "
            f"pp={plan.config.pp} cp={plan.config.cp}) but this job has {world_size}; "
            f"launch it with `autopar run` or torchrun --nproc-per-node={need}")


def layout_of(model: nn.Module, plan: Plan, *, graph: ModelGraph | None = None,
              inputs: Any = None) -> Layout:
    """Trace (a meta copy of) the model, check it against the plan, split it into chunks."""
    config = plan.config
    check_cp(model, config.cp)
    if graph is None:
        meta = meta_copy(model)
        args = inputs if inputs is not None else example_inputs(meta, plan)
        graph = trace(meta, args if isinstance(args, tuple) else (args,))
    check_model(model, graph, plan)
    chunks = config.stage_layers(repeated_blocks(graph))
    return Layout(config=config, layers=graph.layers, chunks=chunks,
                  global_batch_size=plan.global_batch_size)
