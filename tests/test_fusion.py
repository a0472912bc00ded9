"""The fusion model (autopar.fusion): what fused kernels move and save, against first principles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from autopar.cost_models.compute import causal_fraction

from autopar import fusion
from autopar.cluster import Cluster
from autopar.config import ParallelConfig
from autopar.estimate import estimate
from autopar.layer_profiles import _profiles, layer_profiles

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import external  # noqa: E402

H, HEADS, KV, FFN, SEQ = 256, 8, 2, 512, 256
BF16 = 2


def llama():  # noqa: ANN201
    return external.llama_graph(3, H, HEADS, KV, FFN, 1024, SEQ)


def block_chains(graph) -> list[fusion.Chain]:  # noqa: ANN001
    index = next(lay.index for lay in graph.layers if lay.name.endswith("layers.1"))
    nodes = [n for n, d in graph.graph.nodes(data=True) if d["layer"] == index]
    return fusion.chains(graph.graph, nodes, lambda n: 0, fusion.needs_grad(graph.graph))


def test_rmsnorm_is_one_kernel_that_reads_and_writes_once_and_saves_its_input() -> None:
    norm = block_chains(llama())[0]
    assert len(norm.members) >= 6  # fp32 cast, pow, mean, add, rsqrt, mul, cast, weight
    act = SEQ * H * BF16
    assert norm.fwd_bytes == pytest.approx(2 * act)  # read x, write y
    assert norm.saved_bytes == pytest.approx(act)  # x only: no fp32 intermediates
    assert norm.bwd_bytes == pytest.approx(3 * act)  # read dy and x, write dx


def test_swiglu_fuses_across_the_independent_up_projection() -> None:
    swiglu = next(c for c in block_chains(llama()) if any("silu" in m for m in c.members))
    assert len(swiglu.members) == 2
    inputs = 2 * SEQ * FFN * BF16
    assert swiglu.fwd_bytes == pytest.approx(inputs * 1.5)  # gate + up in, product out
    assert swiglu.saved_bytes == pytest.approx(inputs)


def test_rotary_saves_no_more_than_eager_and_writes_no_gradient_for_its_tables() -> None:
    rope = [c for c in block_chains(llama()) if any("neg" in m for m in c.members)]
    assert len(rope) == 2  # q and k
    q = SEQ * H * BF16
    table = SEQ * (H // HEADS) * BF16  # cos or sin
    for chain in rope:
        assert chain.saved_bytes <= 2 * table
        # read the output gradient, write the input gradient: none for cos and sin
        assert chain.bwd_bytes <= 2 * q + chain.saved_bytes


def test_gqa_attention_reads_and_saves_kv_at_their_own_size() -> None:
    graph = llama()
    fused, eager = _profiles(graph, fused=True)[2], _profiles(graph, fused=False)[2]
    (att,) = [o for o in fused.ops if o.op_class == "attention"]
    (att_eager,) = [o for o in eager.ops if o.op_class == "attention"]
    q = SEQ * H * BF16
    kv = SEQ * KV * (H // HEADS) * BF16
    assert att.fwd_bytes == pytest.approx(q + 2 * kv + q)  # q, k, v in; out
    assert att_eager.fwd_bytes == pytest.approx(4 * q)  # repeat_kv copies
    assert att.saved_bytes < att_eager.saved_bytes


def test_fused_stack_is_faster_and_smaller_than_eager_and_eager_is_selectable() -> None:
    graph = external.llama_graph(4, H, HEADS, KV, FFN, 1024, SEQ)
    cluster = Cluster.from_profile("dgx-h100", nodes=1)
    config = ParallelConfig(dp=8)
    fused = estimate(graph, cluster, config, global_batch_size=64)
    graph.kernels = "eager"
    try:
        eager = estimate(graph, cluster, config, global_batch_size=64)
    finally:
        graph.kernels = "fused"
    assert fused.step_time < eager.step_time
    assert fused.memory["activations"] < eager.memory["activations"]
    graph.kernels = "compiled"
    try:
        with pytest.raises(ValueError, match="kernels"):
            layer_profiles(graph)
    finally:
        graph.kernels = "fused"


def test_causal_attention_does_half_the_tiles() -> None:
    assert causal_fraction(64) == 1.0
    assert causal_fraction(8192) == pytest.approx(0.5 * (1 + 128 / 8192))
    graph = llama()
    (node,) = [d for d in graph.graph.nodes.values() if d["op_class"] == "attention"][:1]
    assert node["causal"]


def test_min_cut_is_networkx_largest_source_side_cut() -> None:
    """The OR-Tools cut keeps the same tensors as networkx's ``minimum_cut`` (the largest source
    side), on random layered graphs with ties between cuts of equal weight."""
    import random

    import networkx as nx

    rng = random.Random(0)
    for _ in range(300):
        tensors = [f"t{i}" for i in range(rng.randint(1, 9))]
        arcs: list = []
        for i, t in enumerate(tensors):
            arcs.append((("in", t), ("out", t), float(rng.choice([1, 2, 2, 4, 8]))))
            if i == 0 or rng.random() < 0.3:
                arcs.append(("source", ("in", t), None))
            for u in tensors[:i]:
                if rng.random() < 0.4:
                    arcs.append((("out", u), ("in", t), None))
            if rng.random() < 0.4:
                arcs.append((("out", t), "sink", None))
        flow = nx.DiGraph()
        flow.add_nodes_from(["source", "sink"])
        for u, v, c in arcs:
            flow.add_edge(u, v, **({} if c is None else {"capacity": c}))
        _, (_, sink_side) = nx.minimum_cut(flow, "source", "sink")
        ours = fusion._sink_side_of_min_cut(arcs)
        assert [t for t in tensors if ("in", t) in ours] == \
            [t for t in tensors if ("in", t) in sink_side]
        assert [t for t in tensors if ("out", t) in ours] == \
            [t for t in tensors if ("out", t) in sink_side]
