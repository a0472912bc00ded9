"""What a fused-kernel training stack moves for a layer's memory-bound ops.

The traced graph holds the ops of eager PyTorch: Hugging Face's RMSNorm is six elementwise and
reduction kernels in fp32, SwiGLU two, rotary embeddings five per tensor. Published training
runs use fused kernels (Megatron-LM / Transformer Engine: fused RMSNorm and LayerNorm, fused
bias-GeLU and SwiGLU, fused rope, fused scale-mask-softmax) or a compiler (torch.compile's
Inductor fuses every connected region of pointwise and reduction ops between GEMMs). A fused
kernel keeps its intermediates in registers: it reads its external inputs once, writes its
external outputs once, and pays one launch. Costing the eager ops one by one charges each
intermediate a round trip through HBM, which over-predicts the step time of a fused stack (16%
of a Llama 3.1 8B step) and its activation memory.

A *chain* is a connected set of memory-bound ops (elementwise, normalisation, reduction) of one
layer with no GEMM or attention on a path between any two of them (so one kernel can run
them all, reordered past independent GEMMs as a compiler does), linked directly or through
views, with the same tensor-parallel split. Ops that move
nothing (``contiguous`` of a contiguous tensor) are aliases, like views. Per chain:

- **Forward bytes**: each external input once (at the largest extent any member reads of it),
  each output used outside the chain once, and whatever it saves for backward that it made
  itself (dropout masks, or intermediates the cut keeps).
- **Saved for backward**: the fewest bytes from which the backward can recompute everything
  the eager ops saved: a minimum cut between the chain's inputs and those tensors
  (AOTAutograd's min-cut partitioner), plus its random masks (dropout cannot be recomputed).
  For a norm that is its input, not fp32 intermediates (Megatron's fused RMSNorm keeps the
  input and a per-row rstd, 1/hidden of it); for SwiGLU its input; for rope only cos and sin;
  for softmax its output.
- **Backward bytes**: the gradients of its outputs and what it saved are read once; the
  gradients of its inputs that need one are written once; one launch. A chain on which no
  gradient flows (mask building) has no backward.

Fused attention kernels read grouped-query K/V heads in place (FlashAttention-2, cuDNN and
Transformer Engine support GQA natively), so K/V that reach an attention op through an
``expand`` (Hugging Face's ``repeat_kv``) are read, saved and differentiated at their
un-repeated size.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import networkx as nx

MEMORY_BOUND = frozenset({"elementwise", "normalisation", "reduction"})
"""Op classes a fused kernel or a compiler merges with their neighbours."""

_RANDOM = ("dropout", "bernoulli", "rand")


@dataclass(frozen=True)
class Chain:
    """One fused kernel standing for ``members``: its costs for the traced batch."""

    members: tuple[str, ...]
    fwd_bytes: float
    bwd_bytes: float
    saved_bytes: float
    score_bytes: float


def _is_random(data: dict) -> bool:
    return any(word in str(data["op"]) for word in _RANDOM)


def needs_grad(graph: nx.DiGraph) -> dict[str, bool]:
    """Whether autograd computes a gradient for each node's output: floating point and
    downstream of a parameter (requires_grad propagation). Rotary tables, masks and position
    ids get none."""
    needs: dict[str, bool] = {}
    for n in nx.topological_sort(graph):
        data = graph.nodes[n]
        floating = "float" in str(data["dtype"])
        needs[n] = floating and (bool(data["params"])
                                 or any(needs[p] for p in graph.predecessors(n)))
    return needs


def _is_view(data: dict) -> bool:
    """A view, or an op that returned its input as is (it moved no bytes)."""
    return data["op_class"] == "view" or (
        data["op_class"] in MEMORY_BOUND and not data["bytes_read"] and not data["bytes_written"]
        and not data["saved_bytes"])


def _fusible(data: dict) -> bool:
    return _is_view(data) or data["op_class"] in MEMORY_BOUND


def view_root(graph: nx.DiGraph, node: str) -> str:
    """The op that made the storage ``node`` views (itself unless ``node`` is a view)."""
    seen = {node}
    while _is_view(graph.nodes[node]):
        preds = list(graph.predecessors(node))
        if not preds or preds[0] in seen:
            break
        node = preds[0]
        seen.add(node)
    return node


def _consumers(graph: nx.DiGraph, node: str) -> set[str]:
    """Non-view ops that read ``node``'s output, directly or through views."""
    found: set[str] = set()
    stack = list(graph.successors(node))
    seen: set[str] = set()
    while stack:
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        if _is_view(graph.nodes[s]):
            stack.extend(graph.successors(s))
        else:
            found.add(s)
    return found


def chains(graph: nx.DiGraph, nodes: list[str], group_of: Callable[[str], Hashable],
           grads: dict[str, bool]) -> list[Chain]:
    """Fuse the memory-bound ops among ``nodes`` (one layer, in execution order) into chains.

    Two ops join when one reads the other (through views), no other op runs between them,
    and ``group_of`` gives both the same key (the tensor-parallel split: a fused kernel runs
    on one side of a collective).
    """
    # Level: how many GEMM-like ops lie on the longest path to a node. Ops of one level have
    # no such op between them, so joining only ops of equal level keeps every chain convex.
    level: dict[str, int] = {}
    for n in nodes:
        level[n] = max((level[p] + (not _fusible(graph.nodes[p]))
                        for p in graph.predecessors(n) if p in level), default=0)
    run_of = {n: level[n] for n in nodes if not _is_view(graph.nodes[n])
              and graph.nodes[n]["op_class"] in MEMORY_BOUND}
    mine = set(run_of)
    parent = {n: n for n in mine}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in mine:
        if _is_random(graph.nodes[n]):
            continue  # dropout starts a kernel: fused only with what follows it
        for p in graph.predecessors(n):
            r = view_root(graph, p)
            if r in mine and run_of[r] == run_of[n] and group_of(r) == group_of(n):
                parent[find(r)] = find(n)
    groups: dict[str, list[str]] = {}
    for n in nodes:  # execution order
        if n in mine:
            groups.setdefault(find(n), []).append(n)
    return [_cost(graph, members, grads) for members in groups.values()]


def _cost(graph: nx.DiGraph, members: list[str], grads: dict[str, bool]) -> Chain:
    inside = set(members)
    data = {m: graph.nodes[m] for m in members}
    # External inputs, each once at the largest extent read.
    reads: dict[str, float] = {}
    for m in members:
        for p in graph.predecessors(m):
            root = view_root(graph, p)
            if root not in inside:
                reads[root] = max(reads.get(root, 0.0), graph.edges[p, m]["bytes"])
    outputs = [m for m in members
               if (_consumers(graph, m) - inside) or not any(graph.successors(m))]
    written = {m: float(data[m]["bytes_written"]) for m in outputs}
    saved, made, scores = _saved(graph, data, reads, written)
    fwd = sum(reads.values()) + sum(written.values()) + made
    if not any(grads.get(m, False) for m in members):
        return Chain(tuple(members), fwd, 0.0, saved, scores)
    grad_out = sum(b for m, b in written.items() if grads.get(m, False))
    grad_in = sum(b for r, b in reads.items() if grads.get(r, False))
    return Chain(tuple(members), fwd, grad_out + saved + grad_in, saved, scores)


def _saved(graph: nx.DiGraph, data: dict[str, dict], reads: dict[str, float],
           written: dict[str, float]) -> tuple[float, float, float]:
    """(bytes saved, bytes written only to be saved, attention-score bytes saved) of a chain.

    The eager ops' backward needs the tensors they saved; a fused backward may recompute any of
    them from others. The cheapest set to keep is a minimum vertex cut between the chain's
    inputs and those tensors, each tensor weighted by its bytes (AOTAutograd's min-cut
    partitioner). Random masks cannot be recomputed: they are always kept and written.
    """
    size: dict[str, float] = {**reads, **{m: float(d["bytes_written"]) for m, d in data.items()}}
    random = {m for m, d in data.items() if _is_random(d)}
    arcs: list[tuple[Hashable, Hashable, float | None]] = []  # None: unbounded
    for t, b in size.items():
        arcs.append((("in", t), ("out", t), b))
        if t in reads or t in random:
            arcs.append(("source", ("in", t), None))
    for m in data:
        for p in graph.predecessors(m):
            r = view_root(graph, p)
            if r in size:
                arcs.append((("out", r), ("in", m), None))
    kept = masks = scores = 0.0
    for d in data.values():
        for src, b in d.get("saved_sources", {}).items():
            if src in random:
                masks += b
                scores += b if _square(graph.nodes[src]["shape"]) else 0.0
            elif src in size:
                arcs.append((("out", src), "sink", None))
            else:
                kept += b  # made elsewhere and not read here: nothing to recompute it from
    sink_side = _sink_side_of_min_cut(arcs)
    cut = [t for t in size if ("in", t) not in sink_side and ("out", t) in sink_side]
    saved = kept + masks + sum(size[t] for t in cut)
    made = masks + sum(size[t] for t in cut if t in data and t not in written)
    scores += sum(size[t] for t in cut if _square(graph.nodes[t]["shape"]))
    return saved, made, scores


def _sink_side_of_min_cut(arcs: list[tuple[Hashable, Hashable, float | None]]
                          ) -> set[Hashable]:
    """The nodes that still reach ``"sink"`` once a maximum flow from ``"source"`` saturates
    its arcs: the sink side of the minimum cut with the largest source side (the cut
    networkx's ``minimum_cut`` returns). OR-Tools' max flow, ~15x faster than networkx's on
    these small graphs, which every layer of every traced model builds. Capacities are byte
    counts (whole numbers); None is unbounded. OR-Tools is imported here, not with
    ``import autopar``."""
    from ortools.graph.python import max_flow

    nodes: dict[Hashable, int] = {"source": 0, "sink": 1}
    for u, v, _ in arcs:
        nodes.setdefault(u, len(nodes))
        nodes.setdefault(v, len(nodes))
    unbounded = sum(round(c) for _, _, c in arcs if c is not None) + 1
    flow = max_flow.SimpleMaxFlow()
    for u, v, c in arcs:
        flow.add_arc_with_capacity(nodes[u], nodes[v], unbounded if c is None else round(c))
    status = flow.solve(0, 1)
    if status != flow.OPTIMAL:
        raise RuntimeError(f"max flow of a fused chain failed: status {status}")
    names = list(nodes)
    return {names[i] for i in flow.get_sink_side_min_cut()}


def _square(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 3 and shape[-1] == shape[-2] > 1


def repeated_kv_bytes(graph: nx.DiGraph, node: str) -> tuple[float, float]:
    """(bytes read, bytes saved) of an attention op's inputs beyond their un-repeated size:
    K/V heads that reach it through an ``expand`` (GQA's repeat_kv), which a fused GQA kernel
    reads in place."""
    extra_read = extra_saved = 0.0
    sources = graph.nodes[node].get("saved_sources", {})
    for p in graph.predecessors(node):
        edge = float(graph.edges[p, node]["bytes"])
        n, first = p, p
        while _is_view(graph.nodes[n]):
            preds = list(graph.predecessors(n))
            if not preds:
                break
            if "expand" in str(graph.nodes[n]["op"]):
                before = float(graph.edges[preds[0], n]["bytes"])
                if 0 < before < edge:
                    extra_read += edge - before
                    if first in sources:
                        extra_saved += min(edge - before, sources[first])
                break
            n = preds[0]
    return extra_read, extra_saved
