"""``autopar.estimate``: consistency, the effects that must show, and errors."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import autopar
from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import estimate


@cache
def gpt(layers: int = 8, hidden: int = 1024, heads: int = 16, seq: int = 1024
        ) -> autopar.ModelGraph:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=32000,
                        n_positions=seq, use_cache=False, activation_function="gelu")
    with torch.device("meta"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    ids = torch.zeros(1, seq, dtype=torch.long)
    return autopar.trace(model, (ids,), {"labels": ids})


def test_breakdown_adds_up_and_throughput_follows() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=2)
    config = ParallelConfig(dp=4, tp=2, pp=2, micro_batch_size=2)
    est = estimate(gpt(), cluster, config, global_batch_size=64)
    assert sum(est.breakdown.values()) == pytest.approx(est.step_time, rel=1e-9)
    assert est.samples_per_s == pytest.approx(64 / est.step_time)
    assert est.tokens_per_s == pytest.approx(64 * 1024 / est.step_time)
    assert 0 < est.mfu < 1
    assert est.peak_memory == pytest.approx(sum(est.memory.values()))
    assert est.fits


def test_more_micro_batches_shrink_the_bubble() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    few = estimate(gpt(), cluster, ParallelConfig(pp=8), global_batch_size=8)
    many = estimate(gpt(), cluster, ParallelConfig(pp=8), global_batch_size=64)
    few_bubble = few.breakdown["bubble"] / few.step_time
    many_bubble = many.breakdown["bubble"] / many.step_time
    assert few_bubble > 3 * many_bubble > 0
    assert few.samples_per_s < 0.8 * many.samples_per_s


def test_tensor_parallelism_across_nodes_is_slower() -> None:
    two_nodes = Cluster.from_profile("dgx-a100", nodes=2)
    inside = estimate(gpt(), two_nodes, ParallelConfig(dp=2, tp=8), global_batch_size=16)
    across = estimate(gpt(), two_nodes, ParallelConfig(tp=16), global_batch_size=16)
    assert across.breakdown["tp_comm"] > 2 * inside.breakdown["tp_comm"]
    assert across.samples_per_s < inside.samples_per_s


def test_zero3_across_many_nodes_pays_for_its_gathers() -> None:
    small = Cluster.from_profile("dgx-a100", nodes=1)
    big = Cluster.from_profile("dgx-a100", nodes=128)
    graph = gpt()
    near = estimate(graph, small, ParallelConfig(dp=8, zero_stage=3), global_batch_size=8)
    far = estimate(graph, big, ParallelConfig(dp=1024, zero_stage=3), global_batch_size=1024)
    assert far.breakdown["dp_comm"] > near.breakdown["dp_comm"]
    assert far.model_tflops_per_device < near.model_tflops_per_device


def test_memory_shrinks_with_zero_and_recomputation() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    plain = estimate(gpt(), cluster, ParallelConfig(dp=8), global_batch_size=64)
    zero = estimate(gpt(), cluster, ParallelConfig(dp=8, zero_stage=3), global_batch_size=64)
    full = estimate(gpt(), cluster, ParallelConfig(dp=8, recompute="full"), global_batch_size=64)
    assert zero.memory["optimizer"] == pytest.approx(plain.memory["optimizer"] / 8)
    assert full.memory["activations"] < plain.memory["activations"] / 3
    assert full.breakdown["recompute"] > 0 and plain.breakdown["recompute"] == 0


@pytest.mark.parametrize("config,message", [
    (ParallelConfig(dp=3), "cluster has 8"),
    (ParallelConfig(pp=8, virtual_stages=2, schedule="interleaved"), "pipeline chunks"),
    (ParallelConfig(dp=8, sequence_parallel=True), "sequence_parallel needs tp > 1"),
    (ParallelConfig(pp=8, virtual_stages=2), "needs schedule='interleaved'"),
    (ParallelConfig(pp=8, schedule="interleaved"), "interleaved' needs virtual_stages >= 2"),
    (ParallelConfig(dp=8, virtual_stages=2, schedule="interleaved"), "got pp=1"),
])
def test_invalid_configurations_say_what_is_wrong(config: ParallelConfig, message: str) -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    with pytest.raises(ConfigError, match=message):
        estimate(gpt(), cluster, config, global_batch_size=64)


def test_tp_must_divide_the_heads() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    with pytest.raises(ConfigError, match="tp=8 does not divide the model's 12 attention heads"):
        estimate(gpt(hidden=768, heads=12), cluster, ParallelConfig(tp=8), global_batch_size=8)


def test_heterogeneous_cluster_runs_each_stage_on_its_own_devices() -> None:
    a100 = Cluster.from_profile("dgx-a100", nodes=1).groups[0]
    h100 = Cluster.from_profile("dgx-h100", nodes=1).groups[0]
    mixed = Cluster(name="a100+h100", groups=[a100, h100])
    est = estimate(gpt(layers=16), mixed, ParallelConfig(pp=2, tp=8), global_batch_size=16)
    a100_stage, h100_stage = est.stage_times
    assert h100_stage < a100_stage  # same layers, faster devices
    all_a100 = Cluster(name="a100x2", groups=[a100, a100.model_copy(update={"name": "more"})])
    slow = estimate(gpt(layers=16), all_a100, ParallelConfig(pp=2, tp=8), global_batch_size=16)
    assert est.stage_times[0] == pytest.approx(slow.stage_times[0])
    with pytest.raises(ConfigError, match="span two node groups"):
        estimate(gpt(layers=16), mixed, ParallelConfig(pp=1, tp=8, dp=2), global_batch_size=16)


def test_context_parallelism_splits_compute_and_pays_for_its_ring() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    graph = gpt(seq=4096)
    plain = estimate(graph, cluster, ParallelConfig(dp=8), global_batch_size=8)
    ring = estimate(graph, cluster, ParallelConfig(dp=2, cp=4), global_batch_size=8)
    assert ring.memory["activations"] < plain.memory["activations"] / 3
    # The same work per device either way (8 sequences over 8 devices): no free lunch.
    assert ring.step_time >= 0.95 * plain.step_time


@pytest.mark.parametrize("zero_stage,worst_ratio", [(0, 0.9), (3, 0.5)])
def test_strong_scaling_at_a_fixed_batch_loses_efficiency(zero_stage: int,
                                                           worst_ratio: float) -> None:
    """The same 512 sequences over 8, 64 and 512 GPUs: compute per GPU shrinks, fixed costs
    and ZeRO-3's per-layer gathers (every micro-batch, forward and backward) do not."""
    graph = gpt()
    tflops = []
    for nodes in (1, 8, 64):
        cluster = Cluster.from_profile("dgx-a100", nodes=nodes)
        config = ParallelConfig(dp=8 * nodes, zero_stage=zero_stage)
        est = estimate(graph, cluster, config, global_batch_size=512)
        tflops.append(est.model_tflops_per_device)
    assert tflops[0] >= tflops[1] > tflops[2]
    assert tflops[2] < worst_ratio * tflops[0]


@pytest.mark.parametrize("schedule,virtual", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                              ("zero_bubble", 1)])
def test_every_configuration_gives_a_consistent_breakdown(schedule: str, virtual: int) -> None:
    """Across schedules, ZeRO stages, recomputation, SP and degrees: parts are non-negative and
    add up to the step time, and memory is positive."""
    import itertools

    cluster = Cluster.from_profile("dgx-a100", nodes=2)
    checked = 0
    for zero, recompute, sp, pp, tp in itertools.product(
            [0, 3], ["none", "selective", "full"], [False, True], [1, 2, 4], [1, 2, 8]):
        if sp and tp == 1:
            continue
        try:
            config = ParallelConfig(dp=16 // (pp * tp), tp=tp, pp=pp, zero_stage=zero,
                                    recompute=recompute, sequence_parallel=sp,
                                    schedule=schedule, virtual_stages=virtual)
            est = estimate(gpt(), cluster, config, global_batch_size=64)
        except ConfigError:
            continue
        checked += 1
        assert all(v >= 0 for v in est.breakdown.values()), est.breakdown
        assert sum(est.breakdown.values()) == pytest.approx(est.step_time, rel=1e-9)
        assert est.peak_memory > 0 and all(m > 0 for m in est.stage_memory)
    assert checked >= 20


def test_unknown_precision_or_optimizer_is_a_config_error() -> None:
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    with pytest.raises(ConfigError, match="precision='int4'.*bf16"):
        estimate(gpt(), cluster, ParallelConfig(dp=8), global_batch_size=8, precision="int4")
    with pytest.raises(ConfigError, match="optimizer='lion'.*adamw"):
        estimate(gpt(), cluster, ParallelConfig(dp=8), global_batch_size=8, optimizer="lion")


def test_memory_fit_is_estimates_peak_and_capacity() -> None:
    """``memory_fit`` (the memory half of ``estimate``, without simulating the pipeline)
    gives ``estimate``'s peak memory and capacity to the bit, over schedules, ZeRO stages,
    recomputation, splits and a heterogeneous cluster; and ``fits`` is peak <= capacity."""
    import itertools
    import random

    from autopar.estimate import memory_fit

    graph = gpt(layers=6)
    n = len(graph.layers)
    rng = random.Random(11)
    a100 = Cluster.from_profile("dgx-a100", nodes=1)
    small = a100.groups[0].model_copy(update={"device": a100.groups[0].device.model_copy(
        update={"memory_bytes": 2**30})})
    mixed = Cluster(name="small+h100", groups=[
        small, Cluster.from_profile("dgx-h100", nodes=1).groups[0]])
    checked = fits = 0
    for cluster, (pp, schedule, v), zero, mode in itertools.product(
            (a100, mixed), ((1, "1f1b", 1), (2, "gpipe", 1), (2, "1f1b", 1),
                            (2, "zero_bubble", 1), (2, "interleaved", 2), (4, "interleaved", 2)),
            (0, 1, 3), ("none", "selective", "full")):
        tp = 2
        dp = cluster.world_size // (tp * pp)
        chunks = pp * v
        cuts = sorted(rng.sample(range(1, n), chunks - 1))
        split = tuple(b - a for a, b in zip((0, *cuts), (*cuts, n), strict=True))
        modes = tuple(rng.choice(("none", "selective", "full")) for _ in range(n))
        for layers_per_stage, recompute in ((None, mode), (split, modes)):
            config = ParallelConfig(dp=dp, tp=tp, pp=pp, zero_stage=zero, schedule=schedule,
                                    virtual_stages=v, sequence_parallel=True,
                                    layers_per_stage=layers_per_stage, recompute=recompute)
            gbs = dp * 2 * pp
            try:
                e = estimate(graph, cluster, config, global_batch_size=gbs)
            except ConfigError:
                continue
            peak, capacity = memory_fit(graph, cluster, config, global_batch_size=gbs)
            assert (peak, capacity) == (e.peak_memory, e.capacity), config
            assert e.fits == (peak <= capacity)
            checked += 1
            fits += e.fits
    assert checked > 150 and 0 < fits < checked
