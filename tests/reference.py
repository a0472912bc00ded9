"""Independent measurements on real CPU tensors, to check what tracing measured on fake ones."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autopar.tracing.recorder import EXTRA_FLOP_FORMULAS
from autopar.tracing.tensors import tensors_in


def training_loss(output: Any) -> torch.Tensor:
    """What a training loop backpropagates: the model's loss, else the sum of its outputs."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if hasattr(output, "logits"):
        output = output.logits
    return sum(t.sum() for t in tensors_in(output) if t.is_floating_point())  # type: ignore[return-value]


def real_flops(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """FLOPs of one real forward+backward, by torch's FlopCounterMode.

    FlopCounterMode has no formula for the CPU flash-attention kernel; the same formula torch
    uses for the CUDA kernels is supplied for it.
    """
    model.train()
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        training_loss(model(*args, **kwargs)).backward()
    return counter.get_total_flops()


def real_saved_bytes(model: nn.Module, units: list[str], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> dict[str, int]:
    """Bytes autograd really saves for backward, per unit module, on real tensors.

    Each storage is counted once, at the unit running when it was first saved; parameters are
    not activations. Ops outside every unit count for the unit that ran last.
    """
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current = [units[0]]
    seen: set[int] = set()
    saved: dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            saved[current[0]] += storage.nbytes()
        return t

    handles = []
    for unit in units:
        def enter(module: nn.Module, inputs: Any, unit: str = unit) -> None:
            current[0] = unit
        handles.append(model.get_submodule(unit).register_forward_pre_hook(enter))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    training_loss(output).backward()
    return dict(saved)
