"""Expected mixture-of-experts routing on fake tensors.

Fake tensors have no values, so routing code (``topk`` over router scores, ``one_hot``,
``nonzero``, ``where``, ``expert_idx == n``) cannot run: its shapes depend on data. Assuming
nothing would either crash or, worse, cost the experts as if no token reached them.

This dispatch mode gives routing *expected* values instead. The indices of a ``topk``/``argmax``
over router scores get a real "shadow" tensor holding a perfectly balanced assignment: token
``t``'s ``j``-th choice is expert ``(t*k + j) mod E``, so each expert receives ``T*k/E`` tokens,
the expectation under uniform routing. Every op whose tensor inputs all have shadows (index
arithmetic, masks, ``nonzero``, ``.item()``) is also run for real on the shadows, which are
small integer tensors; data-dependent shapes then come out at their expected sizes and Python
branches on expert ids take the branch real routing would.

Rows gathered with shadowed indices (the tokens an expert receives, an expert's slice of a
stacked weight) are marked *routed*, which lets the layer report active parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten

_ROUTER_CHOICE = {aten.topk.default, aten.argmax.default, aten.max.dim}
_MERGE_BACK = {"index_add", "index_add_", "index_put", "index_put_", "scatter", "scatter_",
               "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"}
_GATHER = {"index", "index_select", "gather", "take", "embedding"}
_MAX_SHADOW = 1 << 24  # elements; routing tensors are tokens x top-k x experts at most


def balanced_choices(shape: tuple[int, ...], num_experts: int) -> torch.Tensor:
    """Expert ids for ``shape[:-1]`` tokens choosing ``shape[-1]`` experts each, balanced."""
    k = shape[-1] if shape else 1
    tokens = max(1, math.prod(shape) // max(k, 1))
    ids = (torch.arange(tokens)[:, None] * k + torch.arange(k)[None, :]) % num_experts
    return ids.reshape(shape)


def _fewer_rows(out: torch.Tensor, source: torch.Tensor) -> bool:
    """A gather by routing indices that keeps a strict subset of rows: one expert's tokens, or
    one expert's slice of a stacked weight. Not routing: a full permutation of the tokens, or
    picking each token's top-k scores along the expert dimension."""
    if out.dim() < source.dim():
        return True
    return out.dim() > 0 and source.dim() > 0 and out.shape[0] < source.shape[0]


@contextmanager
def _real() -> Iterator[None]:
    """Compute on real tensors: no dispatch modes, and no fake mode (an infra mode)."""
    with unset_fake_temporarily(), _disable_current_modes():
        yield


class ExpectedRouting(TorchDispatchMode):
    """Shadows routing indices with their expected values; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._shadow: dict[int, torch.Tensor] = {}
        self._routed: set[int] = set()
        self._alive: list[torch.Tensor] = []

    def is_routed(self, t: torch.Tensor) -> bool:
        """Whether ``t`` holds only the tokens (or weights) routed to one expert."""
        return id(t) in self._routed

    def _keep(self, t: torch.Tensor) -> None:
        self._alive.append(t)

    def _set_shadow(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        self._shadow[id(fake)] = real
        self._keep(fake)

    def _real_inputs(self, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """Inputs with every tensor replaced by its shadow, or None if one has none."""
        missing = False

        def to_real(x: Any) -> Any:
            nonlocal missing
            if isinstance(x, torch.Tensor):
                real = self._shadow.get(id(x))
                if real is None:
                    missing = True
                return real
            return x

        real = tree_map(to_real, (args, kwargs))
        return None if missing else real

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        real_in = self._real_inputs(args, kwargs) if any(
            id(t) in self._shadow for t in tensors) or not tensors else None
        name = func._overloadpacket.__name__ if hasattr(func, "_overloadpacket") else str(func)

        if real_in is not None and tensors:
            with _real():
                real_out = func(*real_in[0], **real_in[1])
            if not isinstance(real_out, (torch.Tensor, tuple, list)):
                return real_out  # .item(), bool(): the expected value
            try:
                out = func(*args, **kwargs)
            except DynamicOutputShapeException:  # nonzero, where(mask): size from the shadow
                assert isinstance(real_out, torch.Tensor)
                out = torch.empty(tuple(real_out.shape), dtype=real_out.dtype)
            for fake, real in zip(tree_flatten(out)[0], tree_flatten(real_out)[0], strict=False):
                if isinstance(fake, torch.Tensor) and isinstance(real, torch.Tensor):
                    self._set_shadow(fake, real)
            return out

        out = func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        small_ints = bool(outs) and outs[0].numel() <= _MAX_SHADOW and \
            not outs[0].is_floating_point()
        if not tensors and small_ints:
            # Factory ops (arange for one_hot, constant fills): their values are known.
            with _real():
                self._set_shadow(outs[0], func(*args, **kwargs))
        elif func in _ROUTER_CHOICE and outs and tensors[0].dim() >= 1:
            position = 2 if func is aten.topk.default else 1
            dim = args[position] if len(args) > position else kwargs.get("dim", -1)
            indices = outs[-1]
            experts = tensors[0].shape[dim] if isinstance(dim, int) else 0
            if indices.numel() <= _MAX_SHADOW and experts > 1:
                with _real():
                    self._set_shadow(indices, balanced_choices(tuple(indices.shape), experts))
        if name in _MERGE_BACK:
            for t in tensors:
                self._shadow.pop(id(t), None)  # mutated with unknown values
        elif any(id(t) in self._routed for t in tensors) or (
                name in _GATHER and any(id(t) in self._shadow for t in tensors)
                and outs and _fewer_rows(outs[0], tensors[0])):
            for o in outs:
                self._routed.add(id(o))
                self._keep(o)
        return out
