"""Small facts about tensors that both capture paths and the recorder need."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils._pytree import tree_flatten


def tensor_bytes(t: torch.Tensor) -> int:
    """Logical bytes of a tensor (what an op reads or writes), not of its storage."""
    return t.numel() * t.element_size()


def storage_key(t: torch.Tensor) -> int:
    """An identity for a tensor's storage, stable across views of it (fake tensors included)."""
    return int(t.untyped_storage()._cdata)


def moved_bytes(op_class: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor]
                ) -> tuple[int, int]:
    """(bytes read, bytes written) by one op: none for views or ops returning an input as is
    (``contiguous`` of a contiguous tensor), else every input read and every output written."""
    in_storages = {storage_key(t) for t in inputs}
    if op_class == "view" or any(storage_key(t) in in_storages for t in outputs):
        return 0, 0
    return sum(tensor_bytes(t) for t in inputs), sum(tensor_bytes(t) for t in outputs)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in a nested structure of args or outputs."""
    return [x for x in tree_flatten(obj)[0] if isinstance(x, torch.Tensor)]


def output_tensors(obj: Any, _depth: int = 0) -> list[torch.Tensor]:
    """Tensors a model returned, wherever they sit: containers, dataclasses, plain objects
    (model outputs are often custom classes that pytree cannot see into)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if _depth > 4:
        return []
    if isinstance(obj, dict):
        children: list[Any] = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return []
    found: list[torch.Tensor] = []
    for child in children:
        found.extend(t for t in output_tensors(child, _depth + 1) if not any(t is f for f in found))
    return found
