"""Tensor parallelism from the traced TP patterns, with DTensor ``parallelize_module``.

- ``column_row``: the column modules split by output features, the last one by input features
  (one all-reduce after it). A pattern that feeds attention is applied only when the query and
  key/value heads both divide by tp; its head counts become local. q, k, v are separate
  projections (Llama), or one fused projection laid out ``[q | k | v]`` (GPT-2's ``c_attn``,
  recognised by the attention's ``split_size``), split by heads: each rank holds the q, k and
  v columns of its heads (``_FusedColumnStyle``). Other fused layouts stay replicated.
- ``vocab_embedding`` / ``vocab_head``: split by vocabulary, when it divides and the weight is
  not tied to another module.
- Hugging Face ``Conv1D`` (GPT-2) is split like a transposed ``nn.Linear``.

Modules without a pattern are replicated: every tp rank computes them in full.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import (
    DTensor,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard

from autopar.executor.errors import ExecutorError
from autopar.executor.sp import sp_plan, warn_no_sp
from autopar.tracing import Layer, TPPattern

HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "n_head")


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class _Conv1DStyle(ParallelStyle):
    """Column or row parallel for ``transformers.pytorch_utils.Conv1D`` (weight ``[in, out]``)."""

    def __init__(self, inner: ColwiseParallel | RowwiseParallel, column: bool) -> None:
        super().__init__()
        self.inner = inner
        self.column = column

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            placement: Shard | Replicate
            if pname == "weight":
                placement = Shard(1) if self.column else Shard(0)
            else:
                placement = Shard(0) if self.column else Replicate()
            module.register_parameter(pname, nn.Parameter(
                distribute_tensor(param, mesh, [placement]), requires_grad=param.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        inner: Any = self.inner
        desired = inner.desired_input_layouts if self.column else (Shard(-1),)
        input_fn = partial(inner._prepare_input_fn, inner.input_layouts, desired)
        output_fn = partial(inner._prepare_output_fn, inner.output_layouts,
                            inner.use_local_output)
        return distribute_module(module, device_mesh, self._partition, input_fn, output_fn)


class _FusedColumnStyle(_Conv1DStyle):
    """Column parallel for a fused projection whose outputs are ``fused`` equal parts laid out
    one after the other (GPT-2's ``c_attn``: ``[q | k | v]``, each split by heads): rank r holds
    the r-th slice of every part, so its local output is ``[q_r | k_r | v_r]``, the q, k and v
    of its own heads.

    The parameters are DTensors with ``_StridedShard(split_factor=fused)`` placements (a
    ``Shard`` of each part, concatenated), so they keep their names, global shape and values:
    ``full_tensor()``, state dicts and checkpoints see the unsplit parameter
    (``checkpoint`` writes its parts as separate blocks). The forward multiplies the local
    shards as a plain column-parallel layer would (the local shard of a ``Shard`` over the
    part-major permutation of the columns), which needs no communication.
    """

    def __init__(self, inner: ColwiseParallel, fused: int) -> None:
        super().__init__(inner, column=True)
        self.fused = fused

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        for pname, param in list(module.named_parameters(recurse=False)):
            dim = 1 if pname == "weight" and _is_conv1d(module) else 0
            placement = _StridedShard(dim, split_factor=self.fused)
            module.register_parameter(pname, nn.Parameter(
                distribute_tensor(param, mesh, [placement]), requires_grad=param.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        module = super()._apply(module, device_mesh)
        conv = _is_conv1d(module)

        def as_shard(param: object, dim: int) -> torch.Tensor | None:
            if param is None:
                return None
            assert isinstance(param, DTensor)
            return DTensor.from_local(param.to_local(), device_mesh, [Shard(dim)],
                                      run_check=False)

        def forward(x: torch.Tensor) -> torch.Tensor:
            weight = as_shard(module.weight, 1 if conv else 0)
            bias = as_shard(getattr(module, "bias", None), 0)
            assert weight is not None
            if not conv:
                return nn.functional.linear(x, weight, bias)
            flat = x.reshape(-1, x.size(-1))
            out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
            return out.view(*x.shape[:-1], out.shape[-1])

        module.forward = forward
        return module


def _fused_parts(attention: nn.Module | None, module: nn.Module) -> int:
    """How many equal ``[q | k | v]`` parts a single column projection of ``attention``
    fuses (3 for GPT-2's ``c_attn``: the attention splits its output by ``split_size``), or 0
    when its layout is not known to be part-major."""
    split = getattr(attention, "split_size", None)
    width = module.nf if _is_conv1d(module) else getattr(module, "out_features", None)
    if isinstance(split, int) and isinstance(width, int) and split and width == 3 * split:
        return 3
    return 0


def _style(module: nn.Module, column: bool, **kw: Any) -> ParallelStyle | None:
    inner = ColwiseParallel(**kw) if column else RowwiseParallel(**kw)
    if isinstance(module, nn.Linear | nn.Embedding):
        return inner
    if _is_conv1d(module):
        return _Conv1DStyle(inner, column)
    return None


def _module(root: nn.Module, name: str) -> nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def tied_modules(model: nn.Module) -> set[str]:
    """Names of the modules that own a parameter another module uses too (a tied embedding
    and head), found on the whole model so every pipeline chunk agrees."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return {n for names in owners.values() if len(names) > 1 for n in names}


def tp_plan(root: nn.Module, layers: list[Layer], tp: int, tied: set[str]
            ) -> tuple[dict[str, ParallelStyle],
                                                                    list[tuple[nn.Module, int]]]:
    """The ``parallelize_module`` plan for the live modules of ``root``, and the attention
    modules whose head counts become local."""
    plan: dict[str, ParallelStyle] = {}
    attention: list[tuple[nn.Module, int]] = []
    for layer in layers:
        attn = [p for p in layer.tp_patterns if p.kind == "attention"]
        for pattern in layer.tp_patterns:
            if pattern.kind == "column_row":
                _column_row(root, pattern, attn, tp, tied, plan, attention)
            elif pattern.kind in ("vocab_embedding", "vocab_head") and pattern.size % tp == 0:
                module = _module(root, pattern.modules[0])
                if module is None or pattern.modules[0] in tied:
                    continue
                if isinstance(module, nn.Embedding):
                    plan[pattern.modules[0]] = RowwiseParallel(input_layouts=Replicate())
                elif isinstance(module, nn.Linear):
                    plan[pattern.modules[0]] = ColwiseParallel(output_layouts=Replicate())
    return plan, attention


def _column_row(root: nn.Module, pattern: TPPattern, attn: list[TPPattern], tp: int,
                tied: set[str],
                plan: dict[str, ParallelStyle], attention: list[tuple[nn.Module, int]]) -> None:
    *columns, row = pattern.modules
    owner = next((a.modules[0] for a in attn
                  if all(c.startswith(a.modules[0] + ".") for c in columns)), None)
    if owner is None:  # eager attention is not recognised by the trace: look for heads
        parent = columns[0].rpartition(".")[0]
        found = _module(root, parent)
        if found is not None and any(hasattr(found, a) for a in ("head_dim", *HEAD_ATTRS)):
            owner = parent
    fused = 0
    modules = [_module(root, name) for name in pattern.modules]
    if any(m is None for m in modules) or tied & set(pattern.modules):
        return
    if owner is not None:
        found = _module(root, owner)
        heads = _heads(found) if found is not None else None
        if heads is None or heads[0] % tp or heads[1] % tp:
            return
        if len(columns) < 2:
            assert modules[0] is not None
            fused = _fused_parts(found, modules[0])
            if not fused or heads[0] != heads[1]:
                return
    styles: list[ParallelStyle | None] = [_style(m, column=True) for m in modules[:-1]
                                          if m is not None]
    if fused:
        styles = [_FusedColumnStyle(ColwiseParallel(), fused)]
    last = modules[-1]
    row_style = _style(last, column=False) if last is not None else None
    if row_style is None or any(s is None for s in styles):
        return
    for name, style in zip(columns, styles, strict=True):
        assert style is not None
        plan[name] = style
    plan[row] = row_style
    if owner is not None:
        module = _module(root, owner)
        if module is not None:
            attention.append((module, tp))


def _heads(module: nn.Module) -> tuple[int, int] | None:
    """(query heads, key/value heads) of an attention module, from it or its config."""
    for source in (module, getattr(module, "config", None)):
        if source is None:
            continue
        heads = next((getattr(source, a) for a in ("num_heads", "num_attention_heads", "n_head")
                      if isinstance(getattr(source, a, None), int)), None)
        if heads is not None:
            kv = getattr(source, "num_key_value_heads", None)
            return heads, kv if isinstance(kv, int) else heads
    return None


def sequence_parallel_applies(model: nn.Module, layers: list[Layer], tp: int,
                              tied: set[str]) -> bool:
    """Whether the whole model (a meta copy will do) takes sequence parallelism under tp; warns
    why not. Decided once for the model so every pipeline stage agrees on the layout of the
    activations it exchanges."""
    plan, _ = tp_plan(model, layers, tp, tied)
    _, reason = sp_plan(model, layers, plan)
    if reason is not None:
        warn_no_sp(reason)
    return reason is None


def apply_tp(root: nn.Module, layers: list[Layer], mesh: DeviceMesh, tied: set[str],
             sequence_parallel: bool = False) -> None:
    """Split the live modules of ``root`` (the model, or one pipeline chunk's copy of it) over
    the tp mesh (a no-op for tp = 1), with sequence parallelism between the split blocks when
    ``sequence_parallel_applies`` said so."""
    tp = mesh.size()
    if tp == 1:
        return
    plan, attention = tp_plan(root, layers, tp, tied)
    if sequence_parallel:
        plan, reason = sp_plan(root, layers, plan, whole_model=False)
        if reason is not None:
            raise ExecutorError(f"sequence parallelism applies to the model but not to the "
                                f"pipeline chunk of layers {layers[0].name}..{layers[-1].name} "
                                f"({reason}); plan with constraints="
                                "{'sequence_parallel': False}")
    if plan:
        parallelize_module(root, mesh, plan)
    for module, degree in attention:
        localise_heads(module, degree)


def localise_heads(module: nn.Module, degree: int) -> None:
    """Make an attention module's head counts (and GPT-2's fused ``split_size``) those of one
    of ``degree`` tensor-parallel ranks, so its forward reshapes its local shards right."""
    for attr in (*HEAD_ATTRS, "split_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value % degree == 0:
            setattr(module, attr, value // degree)
