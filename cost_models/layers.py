"""What one traced layer costs one device under tensor, sequence and context parallelism.

The traced graph says, op by op, what a layer computes for one sample. Tensor parallelism
splits the ops inside the layer's TP regions (the modules its tensor-parallel patterns cover:
attention, MLP, vocabulary-parallel embedding and head) across ``tp`` ranks. Everything else
(norms, residual adds, dropout) is replicated, unless sequence parallelism splits it along the
sequence. Context parallelism splits every op along the sequence. Each column->row pair costs
one all-reduce of its output in the forward pass and one of its input gradient in the
backward pass (Megatron-LM's f/g operators), or the same volume as reduce-scatter plus
all-gather under sequence parallelism.

``LayerProfile`` collects, once per traced layer, the per-sample figures each configuration
needs, so that costing a configuration never walks the graph again.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.cost_models.compute import Device, op_time


@dataclass(frozen=True)
class OpCost:
    """One op of a layer, per sample: what the roofline needs."""

    op_class: str
    fwd_flops: float
    bwd_flops: float
    fwd_bytes: float
    bwd_bytes: float
    saved_bytes: float
    sharded: bool
    """Inside a tensor-parallel region: split across ``tp`` ranks."""
    score_bytes: float = 0.0
    """Part of ``saved_bytes`` that is attention scores: what selective recomputation drops."""
    attention_core: bool = False
    """Part of the attention core (a fused attention kernel, or the ops making or using the
    seq x seq scores of an unfused one): what selective recomputation runs again
    (Korthikanti et al., 2022)."""


@dataclass(frozen=True)
class LayerProfile:
    """Per-sample costs of one layer, split into what tensor parallelism divides and what not."""

    ops: tuple[OpCost, ...]
    tp_allreduce_bytes: float
    """Bytes per sample all-reduced across TP ranks in the forward pass (the same again in the
    backward pass)."""
    params_sharded: int
    params_replicated: int
    boundary_bytes: float
    max_heads: int = 0
    """Attention heads (the tp degree must divide them); 0 for layers without attention."""
    kv_heads: int = 0
    head_dim: int = 0

    def params_per_rank(self, tp: int) -> float:
        """Parameters one tensor-parallel rank holds: its shard plus the replicated ones."""
        return self.params_sharded / tp + self.params_replicated

    def saved_bytes(self, tp: int, sequence_parallel: bool, *, selective: bool = False) -> float:
        """Activation bytes per sample one TP rank keeps for backward; ``selective`` drops the
        attention core's (it is recomputed). Cached within the process (the same sum)."""
        key = (id(self), tp, sequence_parallel, selective)
        hit = _SAVED.get(key)
        if hit is not None and hit[0] is self:
            return hit[1]
        if len(_SAVED) >= _CACHE_ENTRIES:
            _SAVED.clear()
        saved = sum((op.saved_bytes - (op.score_bytes if selective else 0.0))
                    / (tp if op.sharded or sequence_parallel else 1) for op in self.ops)
        _SAVED[key] = (self, saved)
        return saved


_CACHE_ENTRIES = 1 << 16

_SAVED: dict[tuple, tuple[LayerProfile, float]] = {}
"""``saved_bytes`` of this process, keyed by the identity of the (frozen) profile, which each
entry keeps alive (so an id is never reused while its entry stands)."""

_TIMES: dict[tuple, tuple[LayerProfile, Device, tuple[float, float, float]]] = {}
"""``layer_time`` of this process, keyed by the identities of the (frozen) profile and device
(kept alive by the entry), the dtype and the per-op scales: every (samples, tp, sequence
parallelism, cp) with the same scales sums the same op times in the same order."""


def layer_time(profile: LayerProfile, samples: float, device: Device, dtype: str, *, tp: int,
               sequence_parallel: bool, cp: int) -> tuple[float, float, float]:
    """(forward, backward, attention-core forward) seconds of one micro-batch of ``samples``.

    The third is what selective recomputation adds to the backward pass. Cached within the
    process by the two scales the ops take (sharded and not)."""
    sharded = samples / (cp * tp)
    replicated = samples / (cp * (tp if sequence_parallel else 1))
    key = (id(profile), id(device), dtype, sharded, replicated)
    hit = _TIMES.get(key)
    if hit is not None and hit[0] is profile and hit[1] is device:
        return hit[2]
    forward = backward = attention = 0.0
    for op in profile.ops:
        scale = sharded if op.sharded or sequence_parallel else replicated
        f = op_time(op.op_class, op.fwd_flops * scale, op.fwd_bytes * scale, device, dtype)
        forward += f
        backward += op_time(op.op_class, op.bwd_flops * scale, op.bwd_bytes * scale, device,
                            dtype)
        if op.attention_core:
            attention += f
    if len(_TIMES) >= _CACHE_ENTRIES:
        _TIMES.clear()
    _TIMES[key] = (profile, device, (forward, backward, attention))
    return forward, backward, attention
