"""Turn captured op records into a ``ModelGraph``: expand repeated blocks, form layers, cost them.

The capture ran on a model whose long runs of identical blocks were cut to their first two
blocks. Here the second block is copied for every dropped one, with its inputs re-wired: what
the second block took from the first, copy *k* takes from copy *k-1*; what it took from
elsewhere (rotary tables, masks) every copy takes from the same place. Before copying, the two
traced blocks must prove the copy faithful: the same ops on the same shapes, and the first
block feeding nothing but the second. Otherwise ``RepeatMismatch`` asks for a full-depth trace.
"""

from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx
from torch import nn

from autopar.tracing.blocks import ModelStructure, Renaming, Run
from autopar.tracing.graph import Layer, ModelGraph
from autopar.tracing.records import OpRecord
from autopar.tracing.tp_patterns import find_patterns, matmul_weight


class RepeatMismatch(Exception):
    """The two traced blocks of a run differ, so copying the second would be wrong."""


def _reprefix(path: str, old: str, new: str) -> str:
    if path == old:
        return new
    if old and path.startswith(old + "."):
        return new + path[len(old):]
    return path


def canonical_param_names(model: nn.Module) -> dict[str, str]:
    """Every name a parameter goes by -> its first name (tied weights have several)."""
    first: dict[int, str] = {}
    names: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(p), name)
    return names


def rename_records(records: list[OpRecord], renaming: Renaming,
                   canonical: dict[str, str]) -> None:
    """Map module paths and parameter names of the shortened model back to the original,
    naming each parameter by its canonical (first) name."""
    for r in records:
        r.module = renaming(r.module)
        r.params = [canonical.get(q, q) for q in (renaming(p) for p in r.params)]


def _unit_call(r: OpRecord, structure: ModelStructure) -> str | None:
    """The unit of an op, ``unit#N`` for the N-th call of a unit run more than once."""
    unit = structure.unit_of(r.module)
    if unit is None or not r.calls.get(unit):
        return unit
    return f"{unit}#{r.calls[unit] + 1}"


def assign_units(records: list[OpRecord], structure: ModelStructure) -> list[str]:
    """The unit of every record; glue ops join the unit before them (or the first one)."""
    units: list[str | None] = [_unit_call(r, structure) for r in records]
    first = next((u for u in units if u is not None), "")
    current = first
    resolved: list[str] = []
    for u in units:
        current = u if u is not None else current
        resolved.append(current)
    return resolved


def expand_runs(records: list[OpRecord], units: list[str], runs: list[Run]
                ) -> tuple[list[OpRecord], list[str], dict[str, str]]:
    """Copy the second traced block of every run for each block that was not traced.

    Returns the records and units in full execution order, and for each copied block the
    block it copies.
    """
    copied_from: dict[str, str] = {}
    for run in runs:
        first, second = run.block(0), run.block(1)
        idx0 = [i for i, u in enumerate(units) if u == first]
        idx1 = [i for i, u in enumerate(units) if u == second]
        blk0, blk1 = [records[i] for i in idx0], [records[i] for i in idx1]
        if (not blk0 or [r.signature() for r in blk0] != [r.signature() for r in blk1]
                or idx1 != list(range(idx1[0], idx1[0] + len(idx1)))):
            raise RepeatMismatch(f"blocks {first} and {second} trace differently")
        names0 = {r.name for r in blk0}
        for r, unit in zip(records, units, strict=True):
            if unit not in (first, second) and any(i in names0 for i in r.inputs):
                raise RepeatMismatch(f"{first} feeds ops outside {second}")
        names1 = [r.name for r in blk1]
        prev_names = names1
        clones: list[OpRecord] = []
        clone_units: list[str] = []
        for k in range(2, run.length):
            block = run.block(k)
            names = [f"{name}@{run.start + k}" for name in names1]
            # Inside the copy: its own ops; from the first block: the previous copy's ops.
            rename = dict(zip(names1, names, strict=True))
            rename.update(zip((r.name for r in blk0), prev_names, strict=True))
            for name, r in zip(names, blk1, strict=True):
                clones.append(r.renamed(name, rename, _reprefix(r.module, second, block),
                                        [_reprefix(q, second, block) for q in r.params]))
                clone_units.append(block)
            copied_from[block] = second
            prev_names = names
        last = dict(zip(names1, prev_names, strict=True))
        end = idx1[-1] + 1
        for r in records[end:]:
            if any(i in last for i in r.inputs):
                r.inputs = [last.get(i, i) for i in r.inputs]
                r.input_bytes = {last.get(i, i): b for i, b in r.input_bytes.items()}
            if any(i in last for i in r.saved_sources):
                r.saved_sources = {last.get(i, i): b for i, b in r.saved_sources.items()}
        records = records[:end] + clones + records[end:]
        units = units[:end] + clone_units + units[end:]
    return records, units, copied_from


def active_fractions(records: list[OpRecord], by_name: dict[str, OpRecord],
                     param_shapes: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """Fraction of each expert parameter one token uses (top_k / num_experts under routing).

    A weight's *utilisation* is the number of tokens its matmuls process (FLOPs / 2 / size).
    Dense 2-D weights process every token of the layer; an expert's weight (used by routed ops,
    or stacked with others in a 3-D parameter) processes only its share. Only expert weights
    get a fraction below one, so convolutions and poolers are never mistaken for experts.
    """
    util: dict[str, float] = defaultdict(float)
    expert: set[str] = set()
    dense_tokens = 0.0
    for r in records:
        p = matmul_weight(r, by_name, param_shapes, through=("view", "elementwise"),
                          dims=(2, 3))
        if p is None or not r.fwd_flops:
            continue
        util[p] += r.fwd_flops / 2 / math.prod(param_shapes[p])
        if r.routed or len(param_shapes[p]) == 3 and "grouped_mm" in r.target:
            expert.add(p)
    for p, u in util.items():
        if p not in expert and len(param_shapes[p]) == 2:
            dense_tokens = max(dense_tokens, u)
    if not dense_tokens:
        return {}
    return {p: min(1.0, util[p] / dense_tokens) for p in expert}


def _segments(units: list[str]) -> list[tuple[str, int, int]]:
    """Maximal stretches of consecutive records of one unit: (unit, start, stop)."""
    segments: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[start]:
            segments.append((units[start], start, i))
            start = i
    return segments


def build_graph(model: nn.Module, records: list[OpRecord], units: list[str],
                structure: ModelStructure, copied_from: dict[str, str], *, batch_size: int,
                input_shapes: list[tuple[int, ...]], capture: str, signature: str
                ) -> ModelGraph:
    """Layers with per-sample costs, parameters by first use, and the op graph."""
    params = dict(model.named_parameters())
    param_shapes = {n: tuple(p.shape) for n, p in params.items()}
    by_name = {r.name: r for r in records}
    segments = _segments(units)
    layer_of = {}
    for li, (_, start, stop) in enumerate(segments):
        for r in records[start:stop]:
            layer_of[r.name] = li

    vocab = max((param_shapes[r.params[0]][0] for r in records
                 if r.op_class == "embedding" and r.params), default=0)

    # A pipeline cut after layer i carries every tensor made at or before i and used after i.
    crossing = [0] * (len(segments) + 1)
    last_use: dict[str, int] = {}
    for r in records:
        for i in r.inputs:
            last_use[i] = max(last_use.get(i, -1), layer_of[r.name])
    for name, last in last_use.items():
        first = layer_of[name]
        if last > first:
            size = by_name[name].out_bytes
            crossing[first] += size
            crossing[last] -= size

    first_use: dict[str, int] = {}
    for r in records:
        for p in r.params:
            first_use.setdefault(p, layer_of[r.name])
    for name in params:  # unused parameters still live on the layer of their module
        unit = structure.unit_of(name.rpartition(".")[0])
        owner = next((li for li, s in enumerate(segments) if s[0] == unit), 0)
        first_use.setdefault(name, owner)
    owned: dict[int, list[str]] = defaultdict(list)
    for name, li in first_use.items():
        owned[li].append(name)

    layers: list[Layer] = []
    seen_units: dict[str, int] = defaultdict(int)
    layer_index_of_unit: dict[str, int] = {}
    running = 0
    for li, (unit, start, stop) in enumerate(segments):
        recs = records[start:stop]
        seen_units[unit] += 1  # a unit interrupted by another one's ops: number the parts
        name = unit or "(model)"
        if seen_units[unit] > 1:
            name = f"{name}#{seen_units[unit]}"
        layer_index_of_unit.setdefault(unit, li)
        mine = owned.get(li, [])
        fraction = active_fractions(recs, by_name, param_shapes)
        used = {p for r in recs for p in r.params}
        running += crossing[li]
        source = copied_from.get(unit)
        layers.append(Layer(
            index=li,
            name=name,
            signature=structure.signatures.get(unit.partition("#")[0], ""),
            modules=sorted({r.module for r in recs}),
            num_ops=len(recs),
            fwd_flops=sum(r.fwd_flops for r in recs) / batch_size,
            bwd_flops=sum(r.bwd_flops for r in recs) / batch_size,
            recompute_flops=sum(r.recompute_flops for r in recs) / batch_size,
            params=sum(params[p].numel() for p in mine),
            param_bytes=sum(params[p].numel() * params[p].element_size() for p in mine),
            trainable_params=sum(params[p].numel() for p in mine if params[p].requires_grad),
            active_params=round(sum(params[p].numel() * fraction.get(p, 1.0) for p in mine)),
            tied_params=sorted(used - set(mine)),
            activation_bytes=sum(r.saved_bytes for r in recs) / batch_size,
            boundary_bytes=running / batch_size if li < len(segments) - 1 else 0.0,
            tp_patterns=find_patterns(recs, by_name, param_shapes, vocab),
            repeat_of=layer_index_of_unit.get(source) if source else None,
        ))

    graph = nx.DiGraph()
    for r in records:
        graph.add_node(r.name, op=r.target, module=r.module, op_class=r.op_class,
                       layer=layer_of[r.name], fwd_flops=r.fwd_flops, bwd_flops=r.bwd_flops,
                       recompute_flops=r.recompute_flops,
                       bytes_read=r.bytes_read, bytes_written=r.bytes_written,
                       bwd_bytes=r.bwd_bytes, saved_bytes=r.saved_bytes,
                       saved_score_bytes=r.saved_score_bytes,
                       saved_sources=dict(r.saved_sources), causal=r.causal, shape=r.shape,
                       dtype=r.dtype, params=tuple(r.params))
    for r in records:
        for i in r.inputs:
            graph.add_edge(i, r.name, bytes=r.input_bytes.get(i, 0))

    unique = list(params.values())
    return ModelGraph(
        graph, layers, batch_size=batch_size, input_shapes=input_shapes,
        total_params=sum(p.numel() for p in unique),
        param_bytes=sum(p.numel() * p.element_size() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        active_params=sum(layer.active_params for layer in layers),
        capture=capture, signature=signature, model_name=type(model).__name__,
        param_shapes=param_shapes,
    )
