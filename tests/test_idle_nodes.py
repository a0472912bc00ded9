"""``Constraints.allow_idle_devices``: plans on fewer whole nodes, exact under the cost model,
and the bound that prunes the clusters of fewer nodes."""

from __future__ import annotations

import itertools
import math

import pytest

import autopar
from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.errors import InfeasibleError
from autopar.estimate import estimate
from autopar.solver.constraints import Constraints
from autopar.solver.idle import WorkBound, with_fewer_nodes
from tests.models import small_gpt_graph
from tests.test_planner import _mixed, tight


def _best_uniform(graph: autopar.ModelGraph, cluster: Cluster, gbs: int,
                  **pins: object) -> tuple[float, int] | None:
    """(least step time, nodes) over every node count of ``cluster`` and every dp-only
    configuration (ZeRO stage, micro-batch size) on it, through ``estimate``."""
    best = None
    for nodes in range(1, cluster.num_nodes + 1):
        sub = Cluster.from_profile("dgx-a100", nodes=nodes)
        sub = tight(sub, cluster.groups[0].device.memory_bytes / 2**30)
        world = sub.world_size
        for zero, mbs in itertools.product(range(4), (1, 2, 4, 8, 16)):
            try:
                config = ParallelConfig(dp=world, zero_stage=zero, micro_batch_size=mbs,
                                        recompute="none", **pins)  # type: ignore[arg-type]
                e = estimate(graph, sub, config, global_batch_size=gbs)
            except ConfigError:
                continue
            if e.fits and (best is None or e.step_time < best[0]):
                best = (e.step_time, nodes)
    return best


def test_idle_nodes_divide_a_batch_the_whole_cluster_cannot() -> None:
    """24 devices cannot split a batch of 16 over data parallelism alone; 16 of them can:
    without idle devices nothing runs, with them the plan is the least over every node
    count, and its cluster is the nodes it runs on."""
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=3), 80)
    pins = dict(tp=1, pp=1, cp=1, recompute=("none",))
    with pytest.raises(InfeasibleError):
        autopar.plan(graph, cluster, global_batch_size=16, constraints=pins)
    plan = autopar.plan(graph, cluster, global_batch_size=16,
                        constraints={**pins, "allow_idle_devices": True})
    best = _best_uniform(graph, cluster, 16)
    assert best is not None
    assert plan.estimate.step_time == pytest.approx(best[0], rel=1e-12)
    assert plan.cluster.num_nodes == best[1] < cluster.num_nodes
    assert plan.world_size == plan.cluster.world_size == plan.config.world_size
    assert plan.solver.optimal
    again = autopar.plan(graph, cluster, global_batch_size=16,
                         constraints={**pins, "allow_idle_devices": True})
    assert again.model_dump_json() == plan.model_dump_json()


def test_idle_nodes_never_lose_to_the_whole_cluster() -> None:
    """Where every device can be used, allowing idle ones never gives a slower plan."""
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=2), 3.0)
    pins = dict(recompute=("none", "full"), max_tp=2)
    plain = autopar.plan(graph, cluster, global_batch_size=32, constraints=pins)
    idle = autopar.plan(graph, cluster, global_batch_size=32,
                        constraints={**pins, "allow_idle_devices": True})
    assert idle.estimate.step_time <= plain.estimate.step_time
    assert idle.solver.optimal and idle.solver.gap == 0


@pytest.mark.parametrize("order", ["ah", "ha"])
def test_work_bound_never_exceeds_a_plan_and_grows_as_nodes_go(order: str) -> None:
    """The bound of every cluster of fewer nodes (both groups of an A100 + H100 cluster) is
    at most ``estimate`` of every uniform configuration on it; it never falls as nodes go; the
    lattice walk yields every node count once, least bound first. The bound x1.3 would exceed
    some configuration (the test can fail)."""
    graph = small_gpt_graph()
    cluster = _mixed(order)
    gbs = 32
    bound = WorkBound(graph, cluster, Constraints(), global_batch_size=gbs, precision="bf16")
    walked = list(with_fewer_nodes(cluster, bound))
    values = [v for v, _ in walked]
    assert values == sorted(values)
    counts = {tuple((g.name, g.nodes) for g in c.groups) for _, c in walked}
    assert len(counts) == len(walked) == math.prod(g.nodes + 1 for g in cluster.groups) - 1
    closest = math.inf
    for value, sub in walked:
        world = sub.world_size
        for tp, pp, cp in itertools.product((1, 2), (1, 2), (1, 2)):
            if world % (tp * pp * cp):
                continue
            for zero, mbs, mode in itertools.product((0, 3), (1, 2, 4), ("none", "full")):
                try:
                    config = ParallelConfig(dp=world // (tp * pp * cp), tp=tp, pp=pp, cp=cp,
                                            zero_stage=zero, micro_batch_size=mbs,
                                            recompute=mode)
                    e = estimate(graph, sub, config, global_batch_size=gbs)
                except ConfigError:
                    continue
                assert value <= e.step_time * (1 + 1e-9), (sub.name, config)
                closest = min(closest, e.step_time / value)
    assert closest < 1.3


def test_work_bound_covers_every_tensor_parallel_degree_without_attention() -> None:
    """Without attention heads any tp may run, so the bound takes every tp up to the devices
    (it took tp 1 alone before review): it is at most ``estimate()`` of every tp on one and
    two nodes of an MLP."""
    import torch

    from autopar.tracing import trace
    from tests.models import mlp

    graph = trace(mlp(), (torch.zeros(64, 32),))
    cluster = Cluster.from_profile("dgx-a100", nodes=2)
    bound = WorkBound(graph, cluster, Constraints(), global_batch_size=64, precision="bf16")
    assert {tp for tp, *_ in bound.settings} == set(range(1, cluster.world_size + 1))
    checked = 0
    for nodes in (1, 2):
        world = 8 * nodes
        value = bound.of((nodes,))
        for tp, mbs in itertools.product((1, 2, 4, 8, 16), (1, 2, 4)):
            if world % tp:
                continue
            e = estimate(graph, Cluster.from_profile("dgx-a100", nodes=nodes),
                         ParallelConfig(dp=world // tp, tp=tp, micro_batch_size=mbs),
                         global_batch_size=64)
            assert value <= e.step_time * (1 + 1e-9), (nodes, tp, mbs)
            checked += 1
    assert checked >= 20
