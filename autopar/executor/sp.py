"""Megatron-style sequence parallelism on top of the tensor-parallel plan (torchtitan's way).

Between the tensor-parallel regions the activations stay sharded over the sequence (dim 1) as
DTensors ``Shard(1)``: the embedding's output is reduce-scattered to ``Shard(1)``, the norms
outside the blocks run with ``SequenceParallel``, the input of each split attention/MLP block
is all-gathered to ``Replicate``, each row-parallel output is reduce-scattered to ``Shard(1)``
and the final norm and the head consume ``Shard(1)`` (a split head gathers its input; an
unsplit one gets the gathered input).

The model must look like a decoder: one embedding layer, then blocks whose parameters are in
split attention/MLP blocks or in norms, then norms and a head. Anything else (an unsplit fused
attention, a second embedding, a model without split blocks) keeps plain tensor parallelism:
``sp_plan`` says why instead of returning a plan. Under pipeline parallelism the activations
cross stage boundaries still sharded over the sequence (``shard_stage_boundaries``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
)

from autopar.executor.split import first_tensor
from autopar.tracing import Layer


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__.endswith(
        ("RMSNorm", "LayerNorm"))


def _owns_params(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _gather(x: Any, mesh: DeviceMesh) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    dt = x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, [Shard(1)],
                                                             run_check=False)
    return dt.redistribute(mesh, [Replicate()]).to_local()


class GatherInput(ParallelStyle):
    """All-gather the module's activation input (its first positional tensor, or its first
    tensor keyword argument) from ``Shard(1)`` to a replicated local tensor."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if args:
                return (_gather(args[0], device_mesh), *args[1:]), kwargs
            for key, value in kwargs.items():
                if isinstance(value, torch.Tensor):
                    return args, {**kwargs, key: _gather(value, device_mesh)}
            return args, kwargs

        module.register_forward_pre_hook(hook, with_kwargs=True)
        return module


def _block_of(columns: tuple[str, ...]) -> str:
    """The module holding a column→row pattern (the attention or the MLP)."""
    parents = {c.rpartition(".")[0] for c in columns}
    return parents.pop() if len(parents) == 1 else ""


def _is_block(layer: Layer) -> bool:
    return any(p.kind == "column_row" for p in layer.tp_patterns)


def sp_plan(root: nn.Module, layers: list[Layer], tp_styles: dict[str, ParallelStyle],
            whole_model: bool = True) -> tuple[dict[str, ParallelStyle], str | None]:
    """The ``parallelize_module`` plan with sequence parallelism (the tensor-parallel styles
    replaced where the layout changes), or the plain plan and the reason it cannot be.

    ``layers`` are the whole model's (``whole_model``) or one pipeline chunk's: a chunk that
    does not start with the model's first layer receives ``Shard(1)`` activations and one that
    ends before the model's end sends them (``shard_stage_boundaries``).
    """
    plan = dict(tp_styles)
    decoder = [i for i, layer in enumerate(layers) if _is_block(layer)]
    if whole_model and not decoder:
        return tp_styles, "the model has no split attention/MLP blocks"

    def owners(layer: Layer) -> list[tuple[str, nn.Module]]:
        found = []
        for name in layer.modules:
            try:
                module = root.get_submodule(name)
            except AttributeError:
                continue
            if _owns_params(module):
                found.append((name, module))
        return found

    embedding = bool(layers) and layers[0].index == 0
    start = 0
    if embedding:  # the token embedding, and position embeddings added to it (GPT-2's wpe)
        start = 1
        while (start < len(layers) and start not in decoder
               and _single_embedding(owners(layers[start]))):
            start += 1
    first, last = (decoder[0], decoder[-1]) if decoder else (start, start - 1)
    between = [layers[i].name for i in range(first, last + 1) if i not in decoder]
    if between:
        return tp_styles, f"{', '.join(between)}: layers without split blocks between blocks"

    for layer in layers[first:last + 1]:
        reason = _block_styles(layer, owners(layer), plan)
        if reason is not None:
            return tp_styles, reason

    if embedding:
        if decoder and first != start:
            extra = ", ".join(layer.name for layer in layers[start:first])
            return tp_styles, f"{extra}: layers other than embeddings before the first block"
        for layer in layers[:start]:
            reason = _embedding_style(layer.name, owners(layer), plan)
            if reason is not None:
                return tp_styles, reason

    for layer in layers[last + 1:]:
        for name, module in owners(layer):
            if _is_norm(module):
                plan[name] = SequenceParallel()
            elif isinstance(module, nn.Linear) and isinstance(plan.get(name), ColwiseParallel):
                plan[name] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
            elif isinstance(module, nn.Linear) and name not in plan:
                plan[name] = GatherInput()
            else:
                return tp_styles, f"{name}: not a norm or a head after the blocks"
    return plan, None


def _block_styles(layer: Layer, owners: list[tuple[str, nn.Module]],
                  plan: dict[str, ParallelStyle]) -> str | None:
    """Put one decoder block's styles into ``plan``: its split attention/MLP gather their
    input and reduce-scatter their output to ``Shard(1)``, its norms run sequence-parallel.
    Returns why the block cannot, or None."""
    blocks = set()
    for pattern in layer.tp_patterns:
        if pattern.kind != "column_row":
            continue
        *columns, row = pattern.modules
        block = _block_of(tuple(columns))
        if not block or any(m not in plan for m in pattern.modules):
            return f"{block or columns[0]}: stays replicated under tensor parallelism"
        blocks.add(block)
        style: Any = copy.copy(plan[row])  # the plain plan's styles stay unchanged
        if hasattr(style, "inner"):
            style.inner = copy.copy(style.inner)
        inner = getattr(style, "inner", style)
        if not isinstance(inner, RowwiseParallel):
            return f"{row}: not row-parallel"
        inner.output_layouts = (Shard(1),)
        inner.use_local_output = False
        plan[row] = style
    for name, module in owners:
        if any(name.startswith(b + ".") for b in blocks):
            continue
        if not _is_norm(module):
            return f"{name}: a module with weights outside the split blocks"
        plan[name] = SequenceParallel()
    for block in blocks:
        plan[block] = GatherInput()
    return None


def _single_embedding(owners: list[tuple[str, nn.Module]]) -> bool:
    return len(owners) == 1 and isinstance(owners[0][1], nn.Embedding)


def _embedding_style(layer: str, owners: list[tuple[str, nn.Module]],
                     plan: dict[str, ParallelStyle]) -> str | None:
    """Make the embedding's output ``Shard(1)`` (a position embedding's too, so that the sum
    of the two is); returns why it cannot, or None."""
    if not _single_embedding(owners):
        return f"{layer}: the first layer is not a single embedding"
    name = owners[0][0]
    if name in plan:
        plan[name] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1),
                                     use_local_output=False)
    else:
        plan[name] = PrepareModuleOutput(output_layouts=Replicate(),
                                         desired_output_layouts=Shard(1),
                                         use_local_output=False)
    return None


def warn_no_sp(reason: str) -> None:
    """The plan's sequence parallelism falls back to plain tensor parallelism."""
    warnings.warn(f"the plan's sequence parallelism is not applied ({reason}): the executor "
                  "runs plain tensor parallelism (the same results, more activation memory "
                  "than the plan predicts); plan with constraints={'sequence_parallel': False} "
                  "for a prediction that matches", stacklevel=3)


def shard_stage_boundaries(chunk: nn.Module, entry: nn.Module | None, mesh: DeviceMesh) -> None:
    """Pipeline stages exchange sequence-sharded activations: a chunk that ends inside the
    model sends the local part of its ``Shard(1)`` output (1/tp of the sequence, to the rank
    of the next stage with the same tp coordinate), and ``entry``, the first layer module of a
    chunk that starts inside the model, turns the received local part back into ``Shard(1)``.
    Both conversions are differentiable, so gradients cross back the same way."""
    def send(_: nn.Module, args: Any, output: Any) -> Any:
        return output.to_local() if isinstance(output, DTensor) else output

    def receive(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        where, value = first_tensor(args, kwargs)
        if isinstance(value, DTensor):
            return args, kwargs
        value = DTensor.from_local(value, mesh, [Shard(1)], run_check=False)
        if isinstance(where, int):
            return (*args[:where], value, *args[where + 1:]), kwargs
        return args, {**kwargs, where: value}

    chunk.register_forward_hook(send)
    if entry is not None:
        entry.register_forward_pre_hook(receive, with_kwargs=True)
