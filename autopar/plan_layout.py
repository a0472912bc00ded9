"""The parts of a ``Plan`` that say where things run: mesh and rank placement, pipeline stages
with their layers, per-module sharding, recomputation per layer, data-parallel strategy and
micro-batching, all derived from one (graph, cluster, config).

Stage times and memory come from the cost model's own per-chunk functions (those
``estimate()`` sums), so a stage's figures here add up to what the plan's estimate says.
"""

from __future__ import annotations

from typing import Any

from autopar.cluster import Cluster
from autopar.config import ParallelConfig
from autopar.cost_models.pipeline import peak_in_flight
from autopar.estimate import Estimate, repeated_blocks, stage_groups
from autopar.estimate import _chunk_cost as chunk_cost
from autopar.estimate import _stage_memory as stage_memory
from autopar.layer_profiles import layer_profiles
from autopar.plan import (
    MESH_DIMS,
    ChunkPlan,
    DataParallelPlan,
    DeviceMesh,
    MicroBatching,
    ModuleSharding,
    ParamSharding,
    RankPlacement,
    StagePlan,
)
from autopar.tracing import ModelGraph

_STRATEGY: dict[int, Any] = {0: "ddp", 1: "zero1", 2: "zero2", 3: "fsdp"}
_SHARDED: dict[int, Any] = {0: [], 1: ["optimizer"], 2: ["optimizer", "gradients"],
                            3: ["optimizer", "gradients", "parameters"]}


def plan_layout(graph: ModelGraph, cluster: Cluster, config: ParallelConfig,
                global_batch_size: int, precision: str, optimizer: str,
                estimate: Estimate) -> dict[str, Any]:
    """The layout fields of a ``Plan`` (keyword arguments for its constructor)."""
    m = config.micro_batches(global_batch_size)
    return {
        "mesh": device_mesh(cluster, config),
        "stages": stages(graph, cluster, config, m, precision, optimizer, estimate),
        "sharding": sharding(graph, config),
        "recompute": {layer.name: config.recompute_of(layer.index) for layer in graph.layers},
        "data_parallel": DataParallelPlan(
            degree=config.dp, group_size=config.dp * config.cp, zero_stage=config.zero_stage,
            strategy=_STRATEGY[config.zero_stage], sharded=_SHARDED[config.zero_stage]),
        "micro_batching": MicroBatching(
            micro_batch_size=config.micro_batch_size, micro_batches=m,
            samples_per_replica=global_batch_size // config.dp, schedule=config.schedule,
            virtual_stages=config.virtual_stages),
    }


def device_mesh(cluster: Cluster, config: ParallelConfig) -> DeviceMesh:
    """Ranks in Megatron order (tp innermost, then cp, dp, pp), laid on the cluster's nodes in
    the order of its groups, as ``estimate.stage_groups`` assumes."""
    places: list[tuple[int, str, int]] = []  # (node, group, local device) of each rank
    node = 0
    for group in cluster.groups:
        for n in range(group.nodes):
            places += [(node + n, group.name, d) for d in range(group.devices_per_node)]
        node += group.nodes
    ranks = []
    for rank, (n, name, local) in enumerate(places):
        tp = rank % config.tp
        cp = rank // config.tp % config.cp
        dp = rank // (config.tp * config.cp) % config.dp
        pp = rank // (config.tp * config.cp * config.dp)
        ranks.append(RankPlacement(rank=rank, node=n, node_group=name, local_device=local,
                                   pp=pp, dp=dp, cp=cp, tp=tp))
    return DeviceMesh(dims=MESH_DIMS, shape=(config.pp, config.dp, config.cp, config.tp),
                      ranks=ranks)


def stages(graph: ModelGraph, cluster: Cluster, config: ParallelConfig, micro_batches: int,
           precision: str, optimizer: str, estimate: Estimate) -> list[StagePlan]:
    """Each pipeline stage: its ranks, its chunks' layers and per-micro-batch costs, its busy
    time and its memory by kind (the figures ``estimate()`` computes for it)."""
    profiles = layer_profiles(graph)
    groups = stage_groups(cluster, config)
    chunks = config.stage_layers(repeated_blocks(graph))
    per_stage = config.world_size // config.pp
    in_flight = peak_in_flight(config.schedule, config.pp, micro_batches, config.virtual_stages)
    largest = max(p.params_per_rank(config.tp) for p in profiles)
    result = []
    for s, group in enumerate(groups):
        mine = [c for c in range(len(chunks)) if c % config.pp == s]
        plans = []
        for c in mine:
            cost, _ = chunk_cost(profiles, chunks[c], config, group, precision, graph.seq_len)
            plans.append(ChunkPlan(chunk=c, layers=[graph.layers[i].name for i in chunks[c]],
                                   forward_s=cost.forward, backward_s=cost.backward,
                                   send_s=cost.send))
        params = sum(profiles[i].params_per_rank(config.tp) for c in mine for i in chunks[c])
        mem = stage_memory(profiles, chunks, s, config, params, largest, in_flight[s],
                           precision, optimizer)
        result.append(StagePlan(
            stage=s, node_group=group.name, device=group.device.name,
            ranks=list(range(s * per_stage, (s + 1) * per_stage)), chunks=plans,
            time_s=estimate.stage_times[s],
            memory={"weights": mem.weights, "gradients": mem.gradients,
                    "optimizer": mem.optimizer, "activations": mem.activations,
                    "buffers": mem.buffers, "overhead": mem.overhead},
            capacity=float(group.device.memory_bytes)))
    return result


def sharding(graph: ModelGraph, config: ParallelConfig) -> list[ModuleSharding]:
    """Every module that owns parameters (and every tensor-parallel module the trace found),
    with its tensor-parallel style and a DTensor placement of each parameter on dp, cp, tp."""
    owner: dict[str, str] = {}  # module -> layer
    for layer in graph.layers:
        for module in layer.modules:
            if module:
                owner.setdefault(module, layer.name)
    styles: dict[str, tuple[str, str]] = {}  # module -> (style, note)
    for layer in graph.layers:
        for p in layer.tp_patterns:
            if p.kind == "column_row":
                for module in p.modules[:-1]:
                    styles.setdefault(module, ("colwise", ""))
                styles.setdefault(p.modules[-1], ("rowwise", ""))
            elif p.kind == "attention":
                kv = max(1, p.kv_heads // config.tp)
                styles.setdefault(p.modules[0], (
                    "attention", f"{p.size} query / {p.kv_heads} key-value heads of "
                    f"{p.head_dim}: {p.size // config.tp} / {kv} per tp rank"))
            elif p.kind == "experts":
                styles.setdefault(p.modules[0], (
                    "experts", f"{p.size} experts, top-{p.top_k}: {max(1, p.size // config.tp)} "
                    f"per tp rank"))
            else:
                styles.setdefault(p.modules[0], (p.kind, f"vocabulary {p.size}"))
    params: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in graph.param_shapes.items():
        module, _, local = name.rpartition(".")
        params.setdefault(module, {})[local] = tuple(shape)
    # A column->row pair is one kind of module: if any of them is stored (in, out), all are.
    transposed = {m for m in params if _transposed(params[m])}
    for layer in graph.layers:
        for p in layer.tp_patterns:
            if p.kind == "column_row" and transposed.intersection(p.modules):
                transposed.update(p.modules)
    result = []
    for module in sorted(set(params) | set(styles), key=_module_order(graph)):
        style, note = styles.get(module, ("replicate", ""))
        mine = params.get(module, {})
        home = owner.get(module) or _by_prefix(graph, module)
        tied = graph.layer(home).tied_params
        if tied and not mine and style != "attention":
            note = f"weight tied to {', '.join(tied)} (sharded with it)"
        placed = {local: ParamSharding(shape=shape, placements=_placements(
            style, local, shape, module in transposed, config))
            for local, shape in sorted(mine.items())}
        if config.tp == 1 and style != "attention":
            style = "replicate"
        result.append(ModuleSharding(module=module, layer=home, style=style,  # type: ignore[arg-type]
                                     params=placed, note=note))
    return result


def _transposed(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether a module stores its weight as (in, out), as GPT-2's Conv1D does, rather than
    nn.Linear's (out, in): a bias as long as dim 1 (and not dim 0) says so."""
    weight, bias = shapes.get("weight", ()), shapes.get("bias", ())
    return len(weight) == 2 and weight[0] != weight[1] and bias == (weight[1],)


def _placements(style: str, local: str, shape: tuple[int, ...], transposed: bool,
                config: ParallelConfig) -> dict[str, str]:
    """DTensor placements of one parameter on dp, cp and tp (size-1 dims: Replicate())."""
    fsdp = "Shard(0)" if config.zero_stage == 3 else "Replicate()"
    out = {"dp": fsdp if config.dp > 1 else "Replicate()",
           "cp": fsdp if config.cp > 1 else "Replicate()",
           "tp": "Replicate()"}
    if config.tp == 1 or not shape:
        return out
    out_dim, in_dim = (1, 0) if transposed and len(shape) == 2 else (0, 1)
    if local == "bias" or len(shape) == 1:
        if style in ("colwise", "vocab_head"):
            out["tp"] = "Shard(0)"
    elif style in ("colwise", "vocab_head"):
        out["tp"] = f"Shard({out_dim})"
    elif style == "rowwise":
        out["tp"] = f"Shard({in_dim})"
    elif style in ("vocab_embedding", "experts"):
        out["tp"] = "Shard(0)"
    return out


def _module_order(graph: ModelGraph) -> Any:
    """Sort key: by layer, then in the order of the parameters (the model's own order)."""
    order: dict[str, int] = {}
    layer_of: dict[str, int] = {}
    for name in graph.param_shapes:
        order.setdefault(name.rpartition(".")[0], len(order))
    for layer in graph.layers:
        for module in layer.modules:
            order.setdefault(module, len(order))
            if module:
                layer_of.setdefault(module, layer.index)
    return lambda module: (layer_of.get(module, len(graph.layers)),
                           order.get(module, len(order)), module)


def _by_prefix(graph: ModelGraph, module: str) -> str:
    """The layer whose module is the longest prefix of ``module`` (first layer if none)."""
    best, length = graph.layers[0].name, -1
    for layer in graph.layers:
        for m in layer.modules:
            if m and (module == m or module.startswith(m + ".")) and len(m) > length:
                best, length = layer.name, len(m)
    return best

