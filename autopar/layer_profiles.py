"""Condense a ``ModelGraph`` into per-layer ``LayerProfile``s, once, for the cost models.

Decides for each op whether tensor parallelism splits it: ops inside a layer's TP regions are
split (the module covering a column->row pair, an attention module, a vocabulary-parallel
embedding or head and the loss computed on its logits). The rest is replicated.

With ``graph.kernels == "fused"`` (the default: what the published runs of tuned stacks
measure) each chain of memory-bound ops becomes one fused kernel and attention reads GQA's K/V
in place (``autopar.fusion``); ``"eager"`` costs every traced op as its own kernel.
"""

from __future__ import annotations

import math
import weakref

import torch

from autopar import fusion
from autopar.cost_models.compute import causal_fraction
from autopar.cost_models.layers import LayerProfile, OpCost
from autopar.tracing.graph import Layer, ModelGraph


def _common_module(paths: tuple[str, ...]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _regions(layer: Layer) -> tuple[list[str], bool]:
    """Module paths tensor parallelism splits in this layer, and whether it holds the head."""
    regions: list[str] = []
    head = False
    for p in layer.tp_patterns:
        if p.kind == "column_row":
            regions.append(_common_module(p.modules))
        elif p.kind in ("attention", "vocab_embedding", "experts"):
            regions.append(p.modules[0])
        elif p.kind == "vocab_head":
            head = True
            regions.append(p.modules[0])
    return regions, head


def _eager_heads(nodes: list[tuple[str, dict]], seq: int, batch: int) -> int:
    """Query heads of an attention the trace holds as plain matmuls (no fused attention op,
    e.g. GPT-2's or BLOOM's eager attention), from its scores: activation-by-activation
    products (no weight) of shape ``[batch, heads, seq, seq]`` or ``[batch * heads, seq,
    seq]``. Tensor parallelism splits heads, so tp must divide them even where no attention
    pattern was found; 0 where there are no such scores."""
    heads = 0
    for _, data in nodes:
        shape = data["shape"]
        if (data["op_class"] != "matmul" or data["params"] or seq <= 1 or len(shape) < 3
                or tuple(shape[-2:]) != (seq, seq)):
            continue
        if len(shape) >= 4:
            heads = math.gcd(heads, shape[-3])
        elif shape[0] % batch == 0:
            heads = math.gcd(heads, shape[0] // batch)
    return heads


def tp_heads(profiles: list[LayerProfile]) -> list[int]:
    """The attention heads of every layer that has any: tensor parallelism must divide each."""
    return [p.max_heads for p in profiles if p.max_heads]


def has_ring_attention(profiles: list[LayerProfile]) -> bool:
    """Whether context parallelism can be costed: some attention op's key/value heads are
    known (its ring exchange moves them)."""
    return any(p.kv_heads for p in profiles)


def _inside(module: str, regions: list[str]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in regions if r)


def _tensor_bytes(shape: tuple[int, ...], dtype: str) -> float:
    itemsize = torch.empty((), dtype=getattr(torch, dtype or "float32")).element_size()
    return float(math.prod(shape) * itemsize)


_CACHE: weakref.WeakKeyDictionary[ModelGraph, dict[str, list[LayerProfile]]] = (
    weakref.WeakKeyDictionary())


def layer_profiles(graph: ModelGraph) -> list[LayerProfile]:
    """One profile per layer of ``graph``; figures per sample.

    Computed once per graph and kernel mode (two thirds of an ``estimate`` call otherwise):
    the solver costs many configurations of one traced model.
    """
    kernels = getattr(graph, "kernels", "fused")
    if kernels not in ("fused", "eager"):
        raise ValueError(f"graph.kernels must be 'fused' or 'eager', got {kernels!r}")
    cached = _CACHE.setdefault(graph, {})
    if kernels not in cached:
        cached[kernels] = _profiles(graph, fused=kernels == "fused")
    return cached[kernels]


def layer_outputs(graph: ModelGraph) -> list[tuple[float, bool]]:
    """Per layer: bytes per sample of the last tensor its ops write (its output), and whether
    tensor parallelism splits it (a vocabulary-parallel head's logits)."""
    last: dict[int, dict] = {}
    for _, data in graph.graph.nodes(data=True):
        if data["bytes_written"] > 0:
            last[data["layer"]] = data
    outputs = []
    for layer in graph.layers:
        data = last.get(layer.index)
        if data is None:
            outputs.append((0.0, False))
            continue
        regions, head = _regions(layer)
        sharded = _inside(data["module"], regions) or (
            head and data["op_class"] != "normalisation")
        outputs.append((data["bytes_written"] / graph.batch_size, sharded))
    return outputs


def _op_cost(data: dict, batch: int, sharded: bool, core: bool,
             repeated_kv: tuple[float, float] = (0.0, 0.0)) -> OpCost:
    """One traced op as its own kernel; ``repeated_kv``: (read, saved) bytes of repeated K/V
    heads an attention op does not move (``fusion.repeated_kv_bytes``)."""
    # A fused attention op keeps no scores on a GPU, even where the CPU replay fell back
    # to the math path (sdpa with dropout) and saved them.
    fused_scores = data["saved_score_bytes"] if data["op_class"] == "attention" else 0
    extra_read, extra_saved = repeated_kv
    # A causal fused attention kernel skips the masked tiles: less time, same model FLOPs.
    work = causal_fraction(data["shape"][-2]) if data.get("causal") else 1.0
    return OpCost(
        op_class=data["op_class"],
        fwd_flops=data["fwd_flops"] * work / batch,
        bwd_flops=(data["bwd_flops"] + data["recompute_flops"]) * work / batch,
        fwd_bytes=(data["bytes_read"] + data["bytes_written"] - extra_read) / batch,
        # The backward reads K and V and writes their gradients at the stored size.
        bwd_bytes=max(0.0, data["bwd_bytes"] - 2 * extra_read) / batch,
        saved_bytes=(data["saved_bytes"] - fused_scores - extra_saved) / batch,
        score_bytes=(data["saved_score_bytes"] - fused_scores) / batch,
        sharded=sharded,
        attention_core=core,
    )


def _profiles(graph: ModelGraph, *, fused: bool = True) -> list[LayerProfile]:
    nodes_of: list[list[tuple[str, dict]]] = [[] for _ in graph.layers]
    for name, data in graph.graph.nodes(data=True):
        nodes_of[data["layer"]].append((name, data))
    owner: dict[str, int] = {}
    for i, nodes in enumerate(nodes_of):
        for _, data in nodes:
            for p in data["params"]:
                owner.setdefault(p, i)
    owned: list[list[str]] = [[] for _ in graph.layers]
    for p, i in owner.items():
        owned[i].append(p)
    batch = graph.batch_size
    seq = graph.seq_len
    scores = {name for name, data in graph.graph.nodes(data=True)
              if seq > 1 and tuple(data["shape"][-2:]) == (seq, seq)}
    core = scores | {v for u in scores for v in graph.graph.successors(u)}
    grads = fusion.needs_grad(graph.graph) if fused else {}
    profiles = []
    for layer, nodes in zip(graph.layers, nodes_of, strict=True):
        regions, head = _regions(layer)
        ops = []
        sharded_params: set[str] = set()
        split: dict[str, bool] = {}
        for name, data in nodes:
            sharded = _inside(data["module"], regions) or (
                head and data["op_class"] not in ("normalisation",))
            split[name] = sharded
            if sharded:
                sharded_params.update(data["params"])
            if fused and data["op_class"] in fusion.MEMORY_BOUND:
                continue  # costed below, as part of a fused chain (or free, if an alias)
            gqa = (fusion.repeated_kv_bytes(graph.graph, name)
                   if fused and data["op_class"] == "attention" else (0.0, 0.0))
            ops.append(_op_cost(data, batch, sharded,
                                data["op_class"] == "attention" or name in core, gqa))
        if fused:
            key = {name: (split[name], name in core) for name, _ in nodes}
            for chain in fusion.chains(graph.graph, list(key), key.__getitem__, grads):
                first = chain.members[0]
                ops.append(OpCost(
                    op_class="elementwise", fwd_flops=0.0, bwd_flops=0.0,
                    fwd_bytes=chain.fwd_bytes / batch, bwd_bytes=chain.bwd_bytes / batch,
                    saved_bytes=chain.saved_bytes / batch,
                    score_bytes=chain.score_bytes / batch, sharded=split[first],
                    attention_core=first in core))
        allreduce = 0.0
        for p in layer.tp_patterns:
            if p.kind in ("column_row", "vocab_embedding"):
                out = [d for _, d in nodes if d["module"] == p.modules[-1]
                       and d["op_class"] in ("matmul", "embedding")]
                if out:
                    allreduce += _tensor_bytes(out[-1]["shape"], out[-1]["dtype"]) / batch
        numel = {p: math.prod(graph.param_shapes.get(p, (0,))) for p in owned[layer.index]}
        attention = [p for p in layer.tp_patterns if p.kind == "attention"]
        heads = max((p.size for p in attention), default=0) or _eager_heads(nodes, seq, batch)
        profiles.append(LayerProfile(
            ops=tuple(ops),
            tp_allreduce_bytes=allreduce,
            params_sharded=sum(n for p, n in numel.items() if p in sharded_params),
            params_replicated=sum(n for p, n in numel.items() if p not in sharded_params),
            boundary_bytes=layer.boundary_bytes,
            max_heads=heads,
            kv_heads=max((p.kv_heads for p in attention), default=0),
            head_dim=max((p.head_dim for p in attention), default=0),
        ))
    return profiles
