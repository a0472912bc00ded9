"""Find tensor-parallel patterns in a layer's ops, from dataflow alone (no per-model rules).

A *weighted linear* is a matmul-class op with a 2-D parameter among its operands (directly or
through views). Megatron-style pairs are found by walking back from each weighted linear's
input through ops that act independently on each output feature or head (views, elementwise,
attention, reductions): the weighted linears reached first can be column-parallel and the one
walked from row-parallel, with a single all-reduce after it. Normalisations and embeddings mix
features, so the walk stops there.
"""

from __future__ import annotations

from collections.abc import Iterable

from autopar.tracing.graph import TPPattern
from autopar.tracing.records import OpRecord

_PASS_THROUGH = {"view", "elementwise", "attention", "reduction", "matmul"}


def matmul_weight(r: OpRecord, by_name: dict[str, OpRecord],
                  param_shapes: dict[str, tuple[int, ...]], *, through: tuple[str, ...],
                  dims: tuple[int, ...]) -> str | None:
    """The parameter (of a rank in ``dims``) a matmul multiplies by, if any.

    Looks up to three producers back through ops of the classes in ``through``: a transpose
    of the weight, or an expert's slice of a stacked expert weight.
    """
    if r.op_class != "matmul":
        return None
    frontier = [r]
    for _ in range(4):
        for node in frontier:
            for p in node.params:
                if len(param_shapes.get(p, ())) in dims:
                    return p
        frontier = [by_name[i] for n in frontier for i in n.inputs
                    if i in by_name and by_name[i].op_class in through]
    return None


class _Layer:
    """Lookup helpers over the records of one layer."""

    def __init__(self, records: list[OpRecord], by_name: dict[str, OpRecord],
                 param_shapes: dict[str, tuple[int, ...]]) -> None:
        self.records = records
        self.names = {r.name for r in records}
        self.by_name = by_name
        self.param_shapes = param_shapes

    def weight(self, r: OpRecord) -> str | None:
        """The 2-D parameter a matmul multiplies by, looking through up to three views."""
        return matmul_weight(r, self.by_name, self.param_shapes, through=("view",), dims=(2,))

    def upstream_linears(self, start: Iterable[str]) -> list[OpRecord]:
        """Weighted linears reached walking back from ``start`` inside this layer."""
        found: dict[str, OpRecord] = {}
        seen: set[str] = set()
        stack = [i for i in start if i in self.names]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            r = self.by_name[name]
            if self.weight(r) is not None:
                found[name] = r
            elif r.op_class in _PASS_THROUGH:
                stack.extend(i for i in r.inputs if i in self.names)
        return sorted(found.values(), key=lambda r: self.records.index(r))

    def data_inputs(self, r: OpRecord) -> list[str]:
        """Inputs of ``r`` that are activations, not views of its weight."""
        w = self.weight(r)
        return [i for i in r.inputs if not (w and w in self.by_name[i].params)] if w else r.inputs


def find_patterns(records: list[OpRecord], by_name: dict[str, OpRecord],
                  param_shapes: dict[str, tuple[int, ...]], vocab: int) -> list[TPPattern]:
    """Column->row pairs, attention heads and vocabulary-parallel ops among ``records``."""
    layer = _Layer(records, by_name, param_shapes)
    patterns: list[TPPattern] = []
    used: set[str] = set()
    for r in records:
        w = layer.weight(r)
        if w is None:
            continue
        columns = [c for c in layer.upstream_linears(layer.data_inputs(r)) if c.name not in used]
        if columns and r.name not in used:
            used.update(c.name for c in columns)
            used.add(r.name)
            patterns.append(TPPattern(kind="column_row",
                                      modules=tuple(c.module for c in columns) + (r.module,)))
        if vocab and r.shape and r.shape[-1] == vocab:
            patterns.append(TPPattern(kind="vocab_head", modules=(r.module,), size=vocab))
    patterns.extend(_experts(records))
    for r in records:
        if r.op_class == "attention":
            patterns.extend(_attention(layer, r))
        elif r.op_class == "embedding" and r.params:
            rows = param_shapes.get(r.params[0], (0,))[0]
            if rows == vocab:
                patterns.append(TPPattern(kind="vocab_embedding", modules=(r.module,), size=rows))
    return patterns


def _experts(records: list[OpRecord]) -> list[TPPattern]:
    """Expert parallelism: a router's top-k choice over E experts feeding routed matmuls."""
    routers = [r for r in records if r.op_class == "reduction" and "topk" in r.target]
    experts = [r for r in records if r.op_class == "matmul" and (r.routed or "grouped_mm" in
                                                                  r.target)]
    if not routers or not experts:
        return []
    router = max(routers, key=lambda r: r.arg_shapes[0][-1])  # the widest: over all experts
    module = experts[0].module
    for r in experts[1:]:
        while module and not (r.module == module or r.module.startswith(module + ".")):
            module = module.rpartition(".")[0]
    return [TPPattern(kind="experts", modules=(module or router.module,),
                      size=router.arg_shapes[0][-1], top_k=router.shape[-1])]


def _attention(layer: _Layer, r: OpRecord) -> list[TPPattern]:
    """Query heads from the attention op's shapes; KV heads from the projection feeding keys."""
    if not r.arg_shapes or len(r.arg_shapes[0]) < 3:
        return []
    heads, head_dim = r.arg_shapes[0][-3], r.arg_shapes[0][-1]
    kv_heads = heads
    if len(r.inputs) >= 3 and head_dim:
        q_src = {c.name for c in layer.upstream_linears([r.inputs[0]])}
        k_src = layer.upstream_linears([r.inputs[1]])
        v_src = {c.name for c in layer.upstream_linears([r.inputs[2]])}
        if len(k_src) == 1:
            width = k_src[0].shape[-1] // head_dim
            if k_src[0].name in q_src:
                width -= heads
            kv_heads = width // 2 if k_src[0].name in v_src else width
    return [TPPattern(kind="attention", modules=(r.module,), size=heads,
                      kv_heads=max(kv_heads, 1), head_dim=head_dim)]
