"""``autopar.estimate``: predicted step time and memory of one configuration on one cluster.

Ranks are laid out as Megatron-LM does: tensor parallelism innermost (adjacent devices of one
node), then context, data and pipeline parallelism outermost, so each pipeline stage occupies a
contiguous block of devices. The step is:

- each pipeline stage's forward and backward per micro-batch (compute of its layers under
  tp/sp/cp, recomputation, exposed tensor-parallel collectives), sent through the pipeline
  schedule (bubble and send/recv included);
- then the data-parallel gradient synchronisation, minus what overlaps with the last
  micro-batch's backward (DDP/FSDP bucketing), and the optimizer update.

The same functions serve ``estimate()``, the solver and the reports.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from autopar.cluster import Cluster, NodeGroup
from autopar.config import ConfigError, ParallelConfig
from autopar.cost_models.communication import (
    CommGroup,
    all_gather_time,
    all_reduce_time,
    reduce_scatter_time,
    send_recv_time,
)
from autopar.cost_models.layers import LayerProfile, layer_time
from autopar.cost_models.memory import (
    WORKING_BYTES,
    MemoryBreakdown,
    model_state_bytes,
    peak_memory,
)
from autopar.cost_models.pipeline import StageCost, peak_in_flight, simulate
from autopar.layer_profiles import layer_profiles, tp_heads
from autopar.tracing import ModelGraph, trace

OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28.0, "sgd": 16.0}
"""Bytes the optimizer update reads and writes per parameter it owns. AdamW reads an fp32
master weight, momentum, variance and the gradient, and writes the first three plus the
working-precision weight: (4+4+4+2) + (4+4+4+2)."""


class Estimate(BaseModel):
    """What a configuration is predicted to do: times in seconds, memory in bytes per device."""

    model_config = ConfigDict(frozen=True)

    step_time: float
    breakdown: dict[str, float]
    """compute, recompute, tp_comm, pp_comm, bubble, dp_comm, optimizer: they add up to
    step_time (compute, recompute and the collectives are those of the busiest stage)."""
    samples_per_s: float
    tokens_per_s: float
    model_tflops_per_device: float
    mfu: float
    peak_memory: float
    memory: dict[str, float]
    capacity: float
    fits: bool
    stage_times: list[float]
    stage_memory: list[float]


def _comm_group(g: NodeGroup, size: int, stride: int) -> CommGroup:
    """``size`` ranks ``stride`` apart on node group ``g`` (Megatron's tp/cp/dp/pp layout):
    how many share a node, and each rank's share of the node's network rails."""
    return _comm_group_of(g.devices_per_node, max(g.nics_per_node, 1), g.intra_node.bandwidth,
                          g.intra_node.latency_s, g.inter_node.bandwidth,
                          g.inter_node.latency_s, size, stride)


@functools.lru_cache(maxsize=4096)
def _comm_group_of(per_node: int, nics: int, intra_bandwidth: float, intra_latency: float,
                   inter_bandwidth: float, inter_latency: float, size: int, stride: int
                   ) -> CommGroup:
    """``_comm_group`` from the figures it reads; cached: the solver asks for the same few
    groups tens of thousands of times, and a ``CommGroup`` checks its figures when made."""
    ranks_per_node = 1 if stride >= per_node else max(1, min(size, per_node // stride))
    while size % ranks_per_node:
        ranks_per_node -= 1
    return CommGroup(size=size, ranks_per_node=ranks_per_node,
                     intra_bandwidth=intra_bandwidth, intra_latency=intra_latency,
                     inter_bandwidth=inter_bandwidth * nics / per_node,
                     inter_latency=inter_latency)


def check_training(precision: str, optimizer: str) -> None:
    """Refuse a precision or optimizer the cost models do not know, listing those they do."""
    if optimizer not in OPTIMIZER_BYTES_PER_PARAM:
        raise ConfigError(f"optimizer={optimizer!r} is not modelled; use one of "
                          f"{sorted(OPTIMIZER_BYTES_PER_PARAM)}")
    if precision not in WORKING_BYTES:
        raise ConfigError(f"precision={precision!r} is not modelled; use one of "
                          f"{list(WORKING_BYTES)}")


def _validate(config: ParallelConfig, cluster: Cluster, profiles: list[LayerProfile],
              global_batch_size: int, precision: str, optimizer: str) -> int:
    """Refuse what cannot run, saying which part and how to fix it; returns micro-batches."""
    check_training(precision, optimizer)
    if config.world_size != cluster.world_size:
        raise ConfigError(
            f"dp x tp x pp x cp = {config.dp}x{config.tp}x{config.pp}x{config.cp} = "
            f"{config.world_size} devices, but the cluster has {cluster.world_size}; "
            f"choose degrees whose product is {cluster.world_size}")
    for h in tp_heads(profiles):
        if h % config.tp:
            raise ConfigError(f"tp={config.tp} does not divide the model's {h} attention "
                              f"heads; use a tp that divides {h}")
    if config.sequence_parallel and config.tp == 1:
        raise ConfigError("sequence_parallel needs tp > 1: it splits what tensor "
                          "parallelism replicates")
    if config.schedule != "interleaved" and config.virtual_stages != 1:
        raise ConfigError(f"virtual_stages={config.virtual_stages} needs "
                          f"schedule='interleaved' (got {config.schedule!r})")
    if config.schedule == "interleaved" and config.pp < 2:
        raise ConfigError("schedule='interleaved' needs pp >= 2 (got pp=1): it runs other "
                          "stages' chunks between a device's own; use schedule='1f1b'")
    if config.schedule == "interleaved" and config.virtual_stages < 2:
        raise ConfigError("schedule='interleaved' needs virtual_stages >= 2 (got 1): with one "
                          "chunk per device it is 1F1B; set virtual_stages (--virtual-stages "
                          "in the CLI), or use schedule='1f1b'")
    if isinstance(config.recompute, tuple) and len(config.recompute) != len(profiles):
        raise ConfigError(f"recompute lists {len(config.recompute)} modes but the model has "
                          f"{len(profiles)} layers")
    if global_batch_size < 1:
        raise ConfigError(f"global_batch_size must be positive, got {global_batch_size}")
    m = config.micro_batches(global_batch_size)
    if config.schedule == "interleaved" and m % config.pp:
        raise ConfigError(f"the interleaved schedule needs micro-batches ({m}) divisible by "
                          f"pp={config.pp}, as Megatron-LM requires")
    return m


def estimate(model_or_graph: Any, cluster: Cluster, config: ParallelConfig, *,
             example_inputs: Any = None, global_batch_size: int, precision: str = "bf16",
             optimizer: str = "adamw") -> Estimate:
    """Predict the step time and per-device memory of ``config`` on ``cluster``.

    ``model_or_graph`` is a ``ModelGraph`` or an ``nn.Module`` (traced with
    ``example_inputs``). ``global_batch_size`` counts samples (sequences) per optimizer step.
    On a heterogeneous cluster each pipeline stage runs on the node group holding its ranks.
    """
    graph = model_or_graph if isinstance(model_or_graph, ModelGraph) else trace(
        model_or_graph, example_inputs)
    profiles, m, groups, chunks = _layout(graph, cluster, config, global_batch_size, precision,
                                          optimizer)
    costs = [_chunk_cost(profiles, layers, config, groups[c % config.pp], precision,
                         graph.seq_len) for c, layers in enumerate(chunks)]
    stage_costs = [cost for cost, _ in costs]
    pipeline = simulate(stage_costs, m, config.schedule, config.virtual_stages)
    per_device = _per_device([part for _, part in costs], config)
    busiest = max(range(config.pp), key=lambda s: sum(per_device[s]))
    compute, recompute, tp_comm, send = (x * m for x in per_device[busiest])

    device_layer_params = _device_layer_params(profiles, chunks, config)
    dp_comm = optimizer_time = 0.0
    for s, group in enumerate(groups):
        layer_params = device_layer_params[s]
        backward = sum(c.backward for c in stage_costs[s::config.pp])
        forward = sum(c.forward for c in stage_costs[s::config.pp])
        overlap = backward if config.zero_stage < 3 else (forward + backward) * m
        sync = dp_sync_time(layer_params, config, group, precision, m)
        dp_comm = max(dp_comm, max(0.0, sync - overlap))
        owned = sum(layer_params) / (config.dp * config.cp if config.zero_stage >= 1 else 1)
        device = group.device
        optimizer_time = max(optimizer_time, owned * OPTIMIZER_BYTES_PER_PARAM[optimizer] / (
            device.memory_bandwidth * device.memory_efficiency))
    memories = _stage_memories(profiles, chunks, config, device_layer_params, m, precision,
                               optimizer)
    tightest = _tightest(groups, memories)
    worst = memories[tightest]

    # The schedule overlaps some sends (interleaved pays 2(p-1) of them in all): report only
    # what the pipeline exposes beyond the busiest device's work, and the rest as bubble.
    busy = compute + recompute + tp_comm
    send = min(send, max(0.0, pipeline.step_time - busy))
    bubble = max(0.0, pipeline.step_time - busy - send)
    step = pipeline.step_time + dp_comm + optimizer_time
    model_flops = (graph.fwd_flops + graph.bwd_flops) * global_batch_size
    tflops = model_flops / step / config.world_size / 1e12
    mean_peak = sum(g.device.peak(precision) for g in groups) / len(groups)
    return Estimate(
        step_time=step,
        breakdown={"compute": compute, "recompute": recompute, "tp_comm": tp_comm,
                   "pp_comm": send, "bubble": bubble, "dp_comm": dp_comm,
                   "optimizer": optimizer_time},
        samples_per_s=global_batch_size / step,
        tokens_per_s=global_batch_size * graph.seq_len / step,
        model_tflops_per_device=tflops,
        mfu=tflops * 1e12 / mean_peak,
        peak_memory=worst.total,
        memory={"weights": worst.weights, "gradients": worst.gradients,
                "optimizer": worst.optimizer, "activations": worst.activations,
                "buffers": worst.buffers, "overhead": worst.overhead},
        capacity=float(groups[tightest].device.memory_bytes),
        fits=worst.total <= groups[tightest].device.memory_bytes,
        stage_times=[sum(x) * m for x in per_device],
        stage_memory=[mem.total for mem in memories],
    )


def memory_fit(graph: ModelGraph, cluster: Cluster, config: ParallelConfig, *,
               global_batch_size: int, precision: str = "bf16", optimizer: str = "adamw"
               ) -> tuple[float, float]:
    """``estimate``'s ``(peak_memory, capacity)``: the bytes the device with the least memory
    left needs, and its memory. Without the step time, which needs the pipeline simulated:
    the solver checks that a configuration fits before it pays for that (deep pipelines with
    many micro-batches take 10-50 ms each)."""
    profiles, m, groups, chunks = _layout(graph, cluster, config, global_batch_size, precision,
                                          optimizer)
    memories = _stage_memories(profiles, chunks, config,
                               _device_layer_params(profiles, chunks, config), m, precision,
                               optimizer)
    tightest = _tightest(groups, memories)
    return memories[tightest].total, float(groups[tightest].device.memory_bytes)


def _layout(graph: ModelGraph, cluster: Cluster, config: ParallelConfig, global_batch_size: int,
            precision: str, optimizer: str
            ) -> tuple[list[LayerProfile], int, list[NodeGroup], list[range]]:
    """What ``estimate`` and ``memory_fit`` both start from, once ``config`` is checked: the
    layer profiles, the micro-batch count, each stage's node group and each chunk's layers."""
    profiles = layer_profiles(graph)
    m = _validate(config, cluster, profiles, global_batch_size, precision, optimizer)
    return profiles, m, stage_groups(cluster, config), config.stage_layers(
        repeated_blocks(graph))


def _device_layer_params(profiles: list[LayerProfile], chunks: list[range],
                         config: ParallelConfig) -> list[list[float]]:
    """Parameters each rank of a device holds, layer by layer (chunk c runs on device
    c % pp)."""
    out: list[list[float]] = [[] for _ in range(config.pp)]
    for c, layers in enumerate(chunks):
        out[c % config.pp] += [profiles[i].params_per_rank(config.tp) for i in layers]
    return out


def _stage_memories(profiles: list[LayerProfile], chunks: list[range], config: ParallelConfig,
                    device_layer_params: list[list[float]], m: int, precision: str,
                    optimizer: str) -> list[MemoryBreakdown]:
    """Each device's memory; activations for as many micro-batches as its schedule holds at
    once (``peak_in_flight``: a property of the schedule's order, not of its times)."""
    largest = max(p.params_per_rank(config.tp) for p in profiles)
    in_flight = peak_in_flight(config.schedule, config.pp, m, config.virtual_stages)
    return [_stage_memory(profiles, chunks, s, config, sum(device_layer_params[s]), largest,
                          in_flight[s], precision, optimizer) for s in range(config.pp)]


def _tightest(groups: list[NodeGroup], memories: list[MemoryBreakdown]) -> int:
    """The stage whose device has the least memory left."""
    return min(range(len(groups)), key=lambda s: groups[s].device.memory_bytes
               - memories[s].total)


def stage_groups(cluster: Cluster, config: ParallelConfig) -> list[NodeGroup]:
    """The node group each pipeline stage runs on: stages are the outermost dimension, so
    stage ``s`` holds ranks ``s*W/pp .. (s+1)*W/pp - 1`` (node groups in the file's order)."""
    per_stage = config.world_size // config.pp
    starts = []
    total = 0
    for group in cluster.groups:
        starts.append((total, group))
        total += group.nodes * group.devices_per_node
    stages = []
    for s in range(config.pp):
        first, last = s * per_stage, (s + 1) * per_stage - 1
        owners = {id(g) for start, g in starts
                  if start <= last and first < start + g.nodes * g.devices_per_node}
        if len(owners) > 1:
            raise ConfigError(
                f"pipeline stage {s} would span two node groups of the heterogeneous cluster "
                f"{cluster.name}; choose pp so that each group holds whole stages")
        stages.append(next(g for start, g in starts
                           if start <= first < start + g.nodes * g.devices_per_node))
    return stages


@dataclass(frozen=True)
class LayerCost:
    """Seconds one layer costs one device per micro-batch under a configuration.

    The one place a layer's time is derived: ``estimate`` sums these per pipeline chunk and the
    solver builds its stage model from the same figures, so the two never disagree.
    """

    forward: float
    backward: float
    attention: float
    """Forward time of the attention core: what selective recomputation runs again."""
    tp_allreduce: float
    """One tensor-parallel all-reduce of the layer (0 without tensor parallelism)."""
    cp_exposed: float
    """Exposed context-parallel ring exchange, forward and backward together."""

    def recompute(self, mode: str) -> float:
        """Extra backward time of recomputing the layer in ``mode``."""
        return self.forward if mode == "full" else self.attention if mode == "selective" else 0.0

    def comm(self, mode: str) -> float:
        """Exposed tensor- and context-parallel communication: one all-reduce per column->row
        pair forward, one backward, and one more forward when the layer is recomputed in full."""
        return self.tp_allreduce * (3 if mode == "full" else 2) + self.cp_exposed


_LAYER_COSTS: dict[tuple, tuple[LayerProfile, NodeGroup, LayerCost]] = {}
"""``layer_cost`` results of this process, keyed by the identity of the (frozen) profile and
node group, which each entry keeps alive (so an id is never reused while its entry stands),
and by the figures of the configuration it reads."""

_CACHE_ENTRIES = 1 << 16


def layer_cost(profile: LayerProfile, config: ParallelConfig, group: NodeGroup, precision: str,
               seq: int) -> LayerCost:
    """What one layer costs one device of ``group`` per micro-batch under ``config``.

    Cached within the process: a model's identical blocks, and every configuration sharing
    tp, sequence parallelism, cp and micro-batch size, cost the same (the same function of the
    same frozen inputs, so the figures are equal to the bit)."""
    key = (id(profile), id(group), config.micro_batch_size, config.tp,
           config.sequence_parallel, config.cp, precision, seq)
    hit = _LAYER_COSTS.get(key)
    if hit is not None and hit[0] is profile and hit[1] is group:
        return hit[2]
    cost = _layer_cost(profile, config, group, precision, seq)
    if len(_LAYER_COSTS) >= _CACHE_ENTRIES:
        _LAYER_COSTS.clear()
    _LAYER_COSTS[key] = (profile, group, cost)
    return cost


def _layer_cost(profile: LayerProfile, config: ParallelConfig, group: NodeGroup,
                precision: str, seq: int) -> LayerCost:
    b = config.micro_batch_size
    forward, backward, attention = layer_time(
        profile, b, group.device, precision, tp=config.tp,
        sequence_parallel=config.sequence_parallel, cp=config.cp)
    allreduce = 0.0
    if config.tp > 1 and profile.tp_allreduce_bytes:
        allreduce = all_reduce_time(profile.tp_allreduce_bytes * b / config.cp,
                                    _comm_group(group, config.tp, 1))
    ring = 0.0
    if config.cp > 1 and profile.kv_heads:
        ring = _ring_attention_exposed(profile, b, config, _comm_group(group, 2, config.tp),
                                       attention, seq, precision)
    return LayerCost(forward, backward, attention, allreduce, ring)


_SEND_TIMES: dict[tuple, tuple[NodeGroup, float]] = {}
"""``send_time`` results of this process (keyed as ``_LAYER_COSTS``)."""


def send_time(boundary_bytes: float, config: ParallelConfig, group: NodeGroup) -> float:
    """Seconds to pass one micro-batch's activations across a pipeline-stage boundary."""
    if config.pp == 1:
        return 0.0
    key = (boundary_bytes, id(group), config.micro_batch_size, config.cp,
           config.sequence_parallel, config.tp, config.dp)
    hit = _SEND_TIMES.get(key)
    if hit is not None and hit[0] is group:
        return hit[1]
    seconds = _send_time_of(boundary_bytes, config, group)
    if len(_SEND_TIMES) >= _CACHE_ENTRIES:
        _SEND_TIMES.clear()
    _SEND_TIMES[key] = (group, seconds)
    return seconds


def _send_time_of(boundary_bytes: float, config: ParallelConfig, group: NodeGroup) -> float:
    nbytes = boundary_bytes * config.micro_batch_size / config.cp
    if config.sequence_parallel:
        nbytes /= config.tp
    return _send_time(nbytes, _comm_group(group, 2, config.tp * config.cp * config.dp))


def _chunk_cost(profiles: list[LayerProfile], layers: range, config: ParallelConfig,
                group: NodeGroup, precision: str, seq: int
                ) -> tuple[StageCost, tuple[float, float, float, float]]:
    """One pipeline chunk per micro-batch: its StageCost and (compute, recompute, tensor- and
    context-parallel communication, send) seconds."""
    fwd = bwd = recompute = comm = 0.0
    for i in layers:
        cost = layer_cost(profiles[i], config, group, precision, seq)
        mode = config.recompute_of(i)
        fwd += cost.forward
        bwd += cost.backward
        recompute += cost.recompute(mode)
        comm += cost.comm(mode)
    send = send_time(profiles[layers[-1]].boundary_bytes, config, group)
    stage = StageCost(forward=fwd + comm / 2, backward=bwd + recompute + comm / 2, send=send)
    return stage, (fwd + bwd, recompute, comm, send)


def _ring_attention_exposed(p: LayerProfile, b: int, config: ParallelConfig, link: CommGroup,
                            attention: float, seq: int, precision: str) -> float:
    """Exposed seconds of context parallelism's ring exchange of K and V for one layer.

    Each of the ``cp - 1`` ring steps passes a K/V shard (forward) and K/V plus their
    gradients (backward) to the next rank, overlapped with that step's attention compute
    (ring attention); only what outlasts the compute is exposed.
    """
    itemsize = WORKING_BYTES[precision]
    kv_heads = max(p.kv_heads // config.tp, 1)
    shard = 2 * kv_heads * p.head_dim * (seq / config.cp) * itemsize * b
    step = _send_time(shard, link)
    forward = max(0.0, (config.cp - 1) * step - attention)
    backward = max(0.0, (config.cp - 1) * 2 * step - 2 * attention)
    return forward + backward


def dp_sync_time(layer_params: list[float], config: ParallelConfig, group: NodeGroup,
             precision: str, micro_batches: int) -> float:
    """Seconds of one stage's data-parallel synchronisation per step, before any overlap.

    ZeRO-0/1 reduce the accumulated gradients once per step (bucketed: one collective's
    latency). ZeRO-2 keeps only its gradient shard, so it reduce-scatters after every
    micro-batch and gathers the updated weights once. ZeRO-3/FSDP keeps no full weights either:
    every micro-batch gathers each layer's weights for the forward and again for the backward,
    and reduce-scatters its gradients (Rajbhandari et al. 2020, section 7), one collective per
    layer, each paying the ring's latency (what makes it latency-bound over thousands of ranks).
    """
    if config.dp * config.cp == 1:
        return 0.0
    # Context-parallel ranks hold the same weights: gradients are reduced, and a distributed
    # optimizer sharded, over dp x cp ranks (Megatron-Core's data-parallel-with-cp group).
    dp_group = _comm_group(group, config.dp * config.cp, config.tp)
    layers = [p * WORKING_BYTES[precision] for p in layer_params if p]
    if config.zero_stage >= 3:
        return micro_batches * sum(reduce_scatter_time(n, dp_group)
                                   + 2 * all_gather_time(n, dp_group) for n in layers)
    if config.zero_stage == 2:
        return sum(micro_batches * reduce_scatter_time(n, dp_group)
                   + all_gather_time(n, dp_group) for n in layers)
    return all_reduce_time(sum(layers), dp_group)


def _stage_memory(profiles: list[LayerProfile], chunks: list[range], stage: int,
                  config: ParallelConfig, params: float, largest: float, in_flight: int,
                  precision: str, optimizer: str) -> MemoryBreakdown:
    weights, grads, opt = model_state_bytes(params, largest, precision=precision,
                                            optimizer=optimizer, zero_stage=config.zero_stage,
                                            dp=config.dp * config.cp)
    acts = _activation_bytes(profiles, chunks, stage, config, in_flight)
    return peak_memory(weights=weights, gradients=grads, optimizer=opt, activations=acts,
                       dp=config.dp * config.cp)


def _send_time(nbytes: float, link: CommGroup) -> float:
    """Point-to-point between neighbouring stages: over NVLink when they share a node, else
    over the sender's rail, at the achieved (not line) bandwidth."""
    if link.ranks_per_node > 1:
        return send_recv_time(nbytes, bandwidth=link.intra_bandwidth * link.intra_efficiency,
                              latency=link.intra_latency)
    return send_recv_time(nbytes, bandwidth=link.inter_bandwidth * link.inter_efficiency,
                          latency=link.inter_latency)


def repeated_blocks(graph: ModelGraph) -> list[bool]:
    """Which layers are repeated blocks (their signature occurs more than once); a model
    without repeats is all blocks."""
    counts: dict[str, int] = {}
    for layer in graph.layers:
        counts[layer.signature] = counts.get(layer.signature, 0) + 1
    repeated = [counts[layer.signature] > 1 for layer in graph.layers]
    return repeated if any(repeated) else [True] * len(repeated)


def _per_device(parts: Sequence[tuple[float, ...]], config: ParallelConfig
                ) -> list[tuple[float, ...]]:
    """Sum the figures of each device's virtual chunks (chunk c runs on device c % pp)."""
    width = len(parts[0])
    totals = [[0.0] * width for _ in range(config.pp)]
    for c, part in enumerate(parts):
        for k in range(width):
            totals[c % config.pp][k] += part[k]
    return [tuple(t) for t in totals]


def layer_activation(profiles: list[LayerProfile], i: int, config: ParallelConfig,
                     mode: str) -> tuple[float, float]:
    """(bytes held per micro-batch in flight, bytes needed while it runs) of layer ``i``.

    A fully recomputed layer holds only its input (the previous layer's output) between its
    forward and backward, and needs its full activations again while it is recomputed.
    """
    p = profiles[i]
    b = config.micro_batch_size
    full = p.saved_bytes(config.tp, config.sequence_parallel,
                         selective=mode == "selective") * b / config.cp
    if mode != "full":
        return full, 0.0
    checkpoint = profiles[i - 1].boundary_bytes if i else 0.0
    split = config.tp if config.sequence_parallel else 1
    return checkpoint * b / config.cp / split, full


def _activation_bytes(profiles: list[LayerProfile], chunks: list[range], stage: int,
                      config: ParallelConfig, in_flight: int) -> float:
    """Activation bytes device ``stage`` holds at its peak."""
    held = working = 0.0
    for c, layers in enumerate(chunks):
        if c % config.pp != stage:
            continue
        for i in layers:
            kept, needed = layer_activation(profiles, i, config, config.recompute_of(i))
            held += kept
            working = max(working, needed)
    return held * in_flight / config.virtual_stages + working
