"""Measure what one training step of a traced model costs, op by op, on fake tensors.

Both capture paths run the model's forward and backward once on fake CPU tensors with this
recorder active. It attributes to an *owner* (a graph node id) three things that cannot be known
from shapes alone without re-deriving PyTorch's own rules:

- the FLOPs of every ATen op dispatched while the owner runs, forward and backward, using the
  formulas of ``torch.utils.flop_counter`` (the same numbers ``FlopCounterMode`` reports);
- the bytes each backward op reads and writes;
- every tensor autograd saves for backward (``saved_tensors_hooks``), deduplicated by storage
  and excluding parameters, so activation memory is measured, not estimated by formula.

Backward work is attributed through the autograd graph: after an owner's forward, the grad_fn
nodes it created are claimed for it, and hooks on them switch the current owner while the
autograd engine runs them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from autopar.tracing.op_classes import classify, op_name
from autopar.tracing.records import OpRecord
from autopar.tracing.tensors import output_tensors, storage_key, tensor_bytes, tensors_in

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    """A tensor's shape; FlopCounterMode hands formulas shapes already, we hand tensors."""
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def _cpu_flash_fwd(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(_shape(query), _shape(key), _shape(value)))


def _cpu_flash_bwd(grad_out: Any, query: Any, key: Any, value: Any, *args: Any,
                   **kwargs: Any) -> int:
    shapes = (_shape(grad_out), _shape(query), _shape(key), _shape(value))
    return int(sdpa_backward_flop_count(*shapes))


def _grouped_mm(mat_a: Any, mat_b: Any, *args: Any, **kwargs: Any) -> int:
    """Grouped GEMM (mixture-of-experts): every row of the stacked problem is multiplied once.

    2-D x 3-D: tokens sorted by expert times per-expert weights; 2-D x 2-D: the weight
    gradient, groups split the shared K dimension; 3-D x 3-D: a batch of equal groups.
    """
    a, b = _shape(mat_a), _shape(mat_b)
    if len(a) == 2 and len(b) == 3:
        return 2 * a[0] * a[1] * b[2]
    if len(a) == 2 and len(b) == 2:
        return 2 * a[0] * a[1] * b[1]
    if len(a) == 3 and len(b) == 3:
        return 2 * a[0] * a[1] * a[2] * b[2]
    return 2 * a[-2] * a[-1] * b[-1]


# flop_counter knows the CUDA attention kernels but not the CPU flash kernel that fake CPU
# tensors dispatch to (same FLOPs as any fused attention of the same shapes), nor grouped GEMMs.
EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
    aten._grouped_mm: _grouped_mm,
}


def op_flops(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """FLOPs of one dispatched ATen op, 0 for ops without a formula (memory-bound ops)."""
    packet = getattr(func, "_overloadpacket", func)
    if packet in EXTRA_FLOP_FORMULAS:
        return EXTRA_FLOP_FORMULAS[packet](*args, **kwargs)
    formula = flop_registry.get(packet)
    if formula is None:
        return 0
    return int(formula(*args, **kwargs, out_val=out))


def attention_recompute_flops(func: Any, args: tuple[Any, ...]) -> int:
    """FLOPs a fused attention backward spends recomputing the scores ``q @ k^T``.

    flop_counter counts them in the backward (they run), but the standard model-FLOPs
    convention (6N per token + 12·s·h per layer, the basis of MFU) does not, so they are kept
    apart: backward FLOPs stay model FLOPs and this is the extra hardware work.
    """
    name = op_name(func)
    if "attention" not in name or "backward" not in name or len(args) < 3:
        return 0
    query, key = args[1], args[2]
    if not isinstance(query, torch.Tensor) or query.dim() != 4:
        return 0
    b, h_q, s_q, d = query.shape
    return int(2 * b * h_q * s_q * key.shape[-2] * d)


class CostRecorder(TorchDispatchMode):
    """Attributes forward/backward FLOPs, backward bytes and saved activations to owners."""

    def __init__(self, param_storages: Iterable[int] = ()) -> None:
        super().__init__()
        self.owner: Hashable | None = None
        self.backward = False
        self.fwd_flops: dict[Hashable, int] = defaultdict(int)
        self.bwd_flops: dict[Hashable, int] = defaultdict(int)
        self.recompute_flops: dict[Hashable, int] = defaultdict(int)
        self.bwd_bytes: dict[Hashable, int] = defaultdict(int)
        self.saved_bytes: dict[Hashable, int] = defaultdict(int)
        self.saved_score_bytes: dict[Hashable, int] = defaultdict(int)
        self.saved_sources: dict[Hashable, dict[Hashable, int]] = defaultdict(dict)
        """Per saving owner: the owner that made each saved storage -> its bytes (what a
        fusion model needs to tell a fused chain's inputs from its intermediates)."""
        self._made_by: dict[int, Hashable] = {}
        self._saved_storages: set[int] = set()
        self._param_storages = set(param_storages)
        self._claimed: set[torch.autograd.graph.Node] = set()
        self._hook_handles: list[Any] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.prim.device.default:
            return out
        flops = op_flops(func, args, kwargs, out)
        if self.backward:
            recompute = attention_recompute_flops(func, args)
            self.recompute_flops[self.owner] += recompute
            self.bwd_flops[self.owner] += flops - recompute
            if classify(func) != "view":
                moved = tensors_in(args) + tensors_in(kwargs) + tensors_in(out)
                self.bwd_bytes[self.owner] += sum(tensor_bytes(t) for t in moved)
        else:
            self.fwd_flops[self.owner] += flops
            # The maker of a storage is the op whose output it first was: views and in-place
            # ops return an input's storage and keep its maker. Overwriting otherwise handles
            # addresses reused after a free.
            in_keys = {storage_key(t) for t in tensors_in(args) + tensors_in(kwargs)}
            for t in tensors_in(out):
                key = storage_key(t)
                if key not in in_keys:
                    self._made_by[key] = self.owner
        return out

    # -- saved activations -------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self._param_storages and key not in self._saved_storages:
            self._saved_storages.add(key)
            nbytes = t.untyped_storage().nbytes()
            self.saved_bytes[self.owner] += nbytes
            sources = self.saved_sources[self.owner]
            maker = self._made_by.get(key)
            sources[maker] = sources.get(maker, 0) + nbytes
            if t.dim() >= 3 and t.shape[-1] == t.shape[-2] > 1:
                # [batch, heads, seq, seq] (or bmm's [batch*heads, seq, seq] view of it):
                # attention scores or probabilities, what selective recomputation drops.
                self.saved_score_bytes[self.owner] += nbytes
        return t

    # -- backward attribution ----------------------------------------------------------------
    def claim_grad_fns(self, outputs: Any, owner: Hashable) -> None:
        """Give ``owner`` every autograd node reachable from ``outputs`` not claimed yet.

        Called right after the owner's forward: the nodes it created are exactly the unclaimed
        ones reachable from its outputs (earlier owners claimed theirs already).
        """
        stack = [t.grad_fn for t in tensors_in(outputs) if t.grad_fn is not None]
        while stack:
            fn = stack.pop()
            if fn in self._claimed:
                continue
            self._claimed.add(fn)
            self._hook_handles.append(fn.register_prehook(self._enter(owner)))
            self._hook_handles.append(fn.register_hook(self._leave))
            stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)

    def _enter(self, owner: Hashable) -> Callable[..., None]:
        def prehook(grad_outputs: Any) -> None:
            self.owner = owner

        return prehook

    def _leave(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.owner = None

    @contextmanager
    def forward(self) -> Iterator[CostRecorder]:
        """Record a forward pass: dispatched ops and saved tensors go to ``self.owner``."""
        self.backward = False
        with self, torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    def fill(self, records: Iterable[OpRecord]) -> None:
        """Copy the backward and saved-tensor figures measured for each record onto it."""
        for r in records:
            r.bwd_flops = self.bwd_flops.get(r.name, 0)
            r.recompute_flops = self.recompute_flops.get(r.name, 0)
            r.bwd_bytes = self.bwd_bytes.get(r.name, 0)
            r.saved_bytes = self.saved_bytes.get(r.name, 0)
            r.saved_score_bytes = self.saved_score_bytes.get(r.name, 0)
            r.saved_sources = {str(k): b for k, b in self.saved_sources.get(r.name, {}).items()
                               if k is not None}

    def run_backward(self, outputs: Any) -> None:
        """Backpropagate from the training loss, attributing each backward op to its owner.

        The loss is the first scalar floating output that requires grad (what a training loop
        calls ``.backward()`` on); without one, every floating output is seeded with ones, as if
        the caller reduced them into a loss outside the model.
        """
        flat = [t for t in output_tensors(outputs) if t.requires_grad and t.is_floating_point()]
        scalars = [t for t in flat if t.dim() == 0]
        roots = scalars[:1] or flat
        if not roots:
            return
        self.backward = True
        self.owner = None
        try:
            with self:
                torch.autograd.backward(roots, [torch.ones_like(t) for t in roots])
        finally:
            self.backward = False
            for handle in self._hook_handles:
                handle.remove()
            self._hook_handles.clear()
