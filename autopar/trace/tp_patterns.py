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

from autopar.trace.graph import TPPattern
from autopar.trace.records import OpRecord

_PASS_THROUGH = {"view", "elementwise", "attention", "reduction", "matmul"}


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
        if r.op_class != "matmul":
            return None
        frontier, depth = [r], 0
        while frontier and depth < 4:
            for node in frontier:
                for p in node.params:
                    if len(self.param_shapes.get(p, ())) == 2:
                        return p
            frontier = [self.by_name[i] for n in frontier for i in n.inputs
                        if i in self.by_name and self.by_name[i].op_class == "view"]
            depth += 1
        return None

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
    for r in records:
        if r.op_class == "attention":
            patterns.extend(_attention(layer, r))
        elif r.op_class == "embedding" and r.params:
            rows = param_shapes.get(r.params[0], (0,))[0]
            if rows == vocab:
                patterns.append(TPPattern(kind="vocab_embedding", modules=(r.module,), size=rows))
    return patterns


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
