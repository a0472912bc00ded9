"""Activation recomputation per layer: ``full`` recomputes the whole layer in backward,
``selective`` recomputes only its attention core and keeps everything else, as the cost model
assumes (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models": the QK^T scores, softmax, dropout and attention over V are what grows with the square
of the sequence, and cheap to recompute).

The layer module's ``forward`` is wrapped in place (``torch.utils.checkpoint``, non-reentrant),
so parameter names do not change and checkpoints move freely between plans.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    SelectiveCheckpointContext,
    checkpoint,
    create_selective_checkpoint_contexts,
)
from torch.utils.weak import WeakTensorKeyDictionary

from autopar.config import ParallelConfig
from autopar.tracing import Layer

_aten = torch.ops.aten
FUSED_ATTENTION = {_aten._scaled_dot_product_flash_attention.default,
                   _aten._scaled_dot_product_flash_attention_for_cpu.default,
                   _aten._scaled_dot_product_efficient_attention.default,
                   _aten._scaled_dot_product_cudnn_attention.default,
                   _aten._scaled_dot_product_fused_attention_overrideable.default}
"""Fused attention kernels: the whole attention core in one op."""
BATCHED_MATMUL = {_aten.bmm.default, _aten.baddbmm.default}
"""What ``torch.matmul``/``einsum`` of two batched tensors dispatch to (a linear layer of a
3-d activation dispatches to ``mm``/``addmm`` on a 2-d view instead)."""


def _storage(tensor: torch.Tensor) -> int:
    local = getattr(tensor, "_local_tensor", tensor)  # a DTensor's shard, without dispatching
    return int(local.untyped_storage().data_ptr())


class AttentionCorePolicy:
    """A selective-checkpoint policy that recomputes exactly the attention core of one layer.

    The core is a fused attention kernel, or, for unfused attention, the dataflow from a
    batched matmul of two activations (QK^T) to the next batched matmul that consumes it
    (attention over V): every op with an input produced inside the core (scaling, mask,
    softmax, dtype casts, dropout, views) is recomputed, and the core is closed by the second
    matmul, whose output is not marked. Every other op (projections, norms, MLP, residuals,
    the mask itself, repeated KV heads) is saved. A batched matmul with a weight operand (a
    module parameter, e.g. batched expert weights) is a linear layer, not attention: saved.

    The policy runs once per op in forward (SAC replays its decisions in the recompute).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.core = WeakTensorKeyDictionary()
        """Tensors produced inside an open attention core (scores and what follows them)."""

    def __call__(self, ctx: SelectiveCheckpointContext, op: Any, *args: Any,
                 **kwargs: Any) -> CheckpointPolicy:
        if op in FUSED_ATTENTION:
            return CheckpointPolicy.PREFER_RECOMPUTE
        inputs = [a for a in _tensors(args) if isinstance(a, torch.Tensor)]
        inside = any(t in self.core for t in inputs)
        if op in BATCHED_MATMUL and not self._has_weight(inputs):
            if not inside:  # QK^T opens a core; attention over V closes it
                self._mark(ctx.op_output)
            return CheckpointPolicy.PREFER_RECOMPUTE
        if inside:
            self._mark(ctx.op_output)
            return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE

    def _has_weight(self, inputs: list[torch.Tensor]) -> bool:
        weights = {_storage(p) for p in self.module.parameters()}
        return any(_storage(t) in weights for t in inputs)

    def _mark(self, output: Any) -> None:
        for t in _tensors(output):
            if isinstance(t, torch.Tensor):
                self.core[t] = True


def _tensors(value: Any) -> list[Any]:
    """The leaves of an op's arguments or output (tensors among them)."""
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _tensors(v)]
    return [value]


def _wrap(module: nn.Module, selective: bool) -> None:
    inner: Callable[..., Any] = module.forward

    def contexts() -> Any:
        """A fresh policy per forward call: core tensors never leak between calls."""
        return create_selective_checkpoint_contexts(AttentionCorePolicy(module))

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not selective:
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    module.forward = forward


def apply_ac(root: nn.Module, layers: list[Layer], config: ParallelConfig) -> None:
    """Wrap the live layer modules of ``root`` whose plan says to recompute."""
    for layer in layers:
        mode = config.recompute_of(layer.index)
        if mode == "none":
            continue
        try:
            module = root.get_submodule(layer.name)
        except AttributeError:
            continue
        if next(module.parameters(), None) is None:
            continue
        _wrap(module, selective=mode == "selective")
