"""Activation recomputation per layer: ``full`` recomputes the whole layer in backward,
``selective`` keeps matmul and attention outputs and recomputes the cheap ops between them.

The layer module's ``forward`` is wrapped in place (``torch.utils.checkpoint``, non-reentrant),
so parameter names do not change and checkpoints move freely between plans.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from autopar.config import ParallelConfig
from autopar.tracing import Layer

_aten = torch.ops.aten
_SAVE = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.linear.default,
         _aten._scaled_dot_product_efficient_attention.default,
         _aten._scaled_dot_product_flash_attention.default,
         _aten._scaled_dot_product_flash_attention_for_cpu.default}


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def _wrap(module: nn.Module, selective: bool) -> None:
    inner: Callable[..., Any] = module.forward
    context = (partial(create_selective_checkpoint_contexts, _policy) if selective else None)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if context is None:
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, context_fn=context, **kwargs)

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
