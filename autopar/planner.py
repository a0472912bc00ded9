"""``autopar.plan``: the fastest configuration that fits, found by the solver, as a ``Plan``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autopar.cluster import Cluster
from autopar.config import ConfigError
from autopar.errors import InfeasibleError
from autopar.estimate import check_training, estimate
from autopar.layer_profiles import has_ring_attention, layer_profiles, tp_heads
from autopar.plan import Plan, RunnerUp, SolverStats
from autopar.plan_layout import plan_layout
from autopar.solver.constraints import ConstraintError, Constraints
from autopar.tracing import ModelGraph, trace

if TYPE_CHECKING:
    from autopar.solver.search import Progress, SearchResult

GiB = 2**30


def plan(model: Any, cluster: Cluster, *, example_inputs: Any = None,
         global_batch_size: int, precision: str = "bf16", optimizer: str = "adamw",
         constraints: Constraints | dict[str, Any] | None = None,
         time_limit_s: float | None = None, progress: Progress | None = None) -> Plan:
    """Search data, tensor, pipeline and context parallelism, ZeRO, schedules, non-uniform
    stage splits and per-layer recomputation for the fastest step that fits in memory.

    ``model`` is an ``nn.Module`` (traced with ``example_inputs``, on the meta device if you
    like: a tensor, a tuple of positional inputs, or a dict of keyword inputs) or a
    ``ModelGraph``. Without ``time_limit_s`` the plan is optimal under the cost
    model; with one, the best plan found and its proven gap. The limit is the whole call's,
    tracing included (what a caller waits for): the search gets what tracing leaves, and
    costs the configurations a person would write by hand even when nothing is left.
    ``progress`` receives a line each time a better plan is found. Raises
    ``InfeasibleError`` when nothing fits.
    """
    started = time.perf_counter()
    rules = Constraints.of(constraints)
    if global_batch_size < 1:
        raise ConfigError(f"global_batch_size must be positive, got {global_batch_size}")
    check_training(precision, optimizer)
    if time_limit_s is not None and time_limit_s <= 0:
        raise ConfigError(f"time_limit_s must be positive, got {time_limit_s}")
    graph = model if isinstance(model, ModelGraph) else trace(model, example_inputs)
    _check_pins(graph, rules)
    # OR-Tools (and the pandas it imports) loads here, not with `import autopar`.
    from autopar.solver.idle import search_fewer_nodes
    from autopar.solver.search import search

    whole = cluster
    left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - started)
    if rules.allow_idle_devices:
        # The plan may leave whole nodes idle: its cluster is then the nodes it runs on.
        result, cluster = search_fewer_nodes(
            graph, cluster, global_batch_size=global_batch_size, precision=precision,
            optimizer=optimizer, constraints=rules, time_limit_s=left, progress=progress)
    else:
        result = search(graph, cluster, global_batch_size=global_batch_size,
                        precision=precision, optimizer=optimizer, constraints=rules,
                        time_limit_s=left, progress=progress)
    if result.best is None and result.stats.timed_out:
        raise InfeasibleError(
            f"no plan that fits was found within time_limit_s={time_limit_s}; allow more time "
            "(or none, to search to the end)")
    if result.best is None:
        raise _infeasible(graph, whole, result, rules, global_batch_size, precision,
                          optimizer)
    best, stats = result.best, result.stats
    return Plan(
        model=fingerprint(graph),
        cluster=cluster,
        world_size=cluster.world_size,
        global_batch_size=global_batch_size,
        precision=precision,
        optimizer=optimizer,
        config=best.config,
        **plan_layout(graph, cluster, best.config, global_batch_size, precision, optimizer,
                      best.estimate),
        estimate=best.estimate,
        solver=SolverStats(shapes=stats.shapes, pruned_by_time=stats.pruned_by_time,
                           pruned_by_memory=stats.pruned_by_memory, solved=stats.solved,
                           candidates=stats.candidates, optimal=stats.optimal,
                           gap=stats.gap(best.estimate.step_time),
                           lower_bound_s=stats.lower_bound, solve_time_s=stats.solve_time_s),
        runners_up=[RunnerUp(config=e.config, estimate=e.estimate) for e in result.runners_up],
    )


def fingerprint(graph: ModelGraph) -> dict[str, object]:
    """What identifies the model a plan was made for: its structure, size and inputs."""
    return {
        "name": graph.model_name,
        "signature": graph.signature,
        "layers": len(graph.layers),
        "parameters": graph.total_params,
        "input_shapes": [list(s) for s in graph.input_shapes],
    }


def _check_pins(graph: ModelGraph, rules: Constraints) -> None:
    """Refuse pinned degrees the model's attention cannot take, naming the heads (the
    search would only find that nothing fits)."""
    profiles = layer_profiles(graph)
    if rules.tp is not None:
        for heads in tp_heads(profiles):
            if heads % rules.tp:
                raise ConstraintError(
                    f"constraints.tp={rules.tp} does not divide the model's {heads} attention "
                    f"heads; pin a tp that divides {heads}, or leave tp to the solver")
    if rules.cp is not None and rules.cp > 1 and not has_ring_attention(profiles):
        raise ConstraintError(
            f"constraints.cp={rules.cp} needs an attention op whose key/value heads the trace "
            "found (context parallelism exchanges them), and this model has none (attention "
            "traced as plain matmuls, e.g. eager attention: use sdpa); pin cp=1")


def _infeasible(graph: ModelGraph, cluster: Cluster, result: SearchResult,
                rules: Constraints, global_batch_size: int, precision: str,
                optimizer: str) -> InfeasibleError:
    """Say what the least memory any configuration needs is, what the devices have, and what
    would help."""
    from autopar.solver.stage_model import StageModel

    least = None
    for tables in result.tables_for_memory:
        candidate, _ = StageModel(tables, minimize_memory=True).solve(None, 1.0)
        if candidate is None:
            continue
        config = candidate.config(tables.shape)
        est = estimate(graph, cluster, config, global_batch_size=global_batch_size,
                       precision=precision, optimizer=optimizer)
        if least is None or est.peak_memory < least[1].peak_memory:
            least = (config, est)
    capacity = min(g.device.memory_bytes for g in cluster.groups) * (1 - rules.memory_headroom)
    if least is None:
        return InfeasibleError(
            f"no configuration of the {graph.total_params / 1e9:.2f}B-parameter model can run on "
            f"{cluster.world_size} devices with global_batch_size={global_batch_size} under "
            f"the constraints given; relax the pinned degrees or change the batch size")
    config, est = least
    help_ = ["more devices"]
    if "full" not in rules.recompute:
        help_.append("allowing full recomputation (constraints.recompute)")
    if rules.zero_stage is not None and rules.zero_stage < 3:
        help_.append("ZeRO-3 (constraints.zero_stage)")
    if est.memory["activations"] > 0.2 * est.peak_memory:
        help_.append("a smaller micro-batch or sequence length")
    return InfeasibleError(
        f"nothing fits: the least memory any configuration needs is "
        f"{est.peak_memory / GiB:.1f} GiB per device (dp={config.dp} tp={config.tp} "
        f"pp={config.pp} cp={config.cp} zero={config.zero_stage}), but the devices have "
        f"{capacity / GiB:.1f} GiB usable; try {', '.join(help_)}")
