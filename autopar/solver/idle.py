"""Plans that leave whole nodes idle (``Constraints.allow_idle_devices``).

Fewer nodes can be faster (a device count whose degrees divide the batch, the heads and the
layers better) or the only way to run at all (a batch no data-parallel degree of the whole
cluster divides). The planner searches the clusters made of fewer whole nodes of each group
best first by a lower bound on their step time, and stops at the first whose bound is not
below the best plan found: no smaller one can win, as the bound only grows as nodes go.

The bound (``WorkBound``): every device's step is at least its own forwards and backwards, so
the slowest device takes at least the average of all of them. Each layer costs the whole
batch at least ``global batch x t x c x (forward + backward) / b`` device-seconds, least over
the tensor- and context-parallel degrees t and c, micro-batch sizes b, sequence parallelism
and node groups a plan could give it (recomputation, communication, bubbles and the
optimizer only add to it). Divided by the devices, that is a lower bound for every plan on
them; with fewer devices (or fewer groups to choose the cheapest from) it only grows.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator

from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import layer_cost
from autopar.layer_profiles import has_ring_attention, layer_profiles, tp_heads
from autopar.solver.constraints import Constraints
from autopar.solver.search import Progress, SearchResult, SearchStats, search
from autopar.solver.space import divisors, pinned
from autopar.solver.tables import LayerClasses
from autopar.tracing import ModelGraph


class WorkBound:
    """Least device-seconds of one training step on any devices (module docstring), by the
    node groups a plan may use."""

    def __init__(self, graph: ModelGraph, cluster: Cluster, constraints: Constraints, *,
                 global_batch_size: int, precision: str) -> None:
        self.graph = graph
        self.cluster = cluster
        self.global_batch_size = global_batch_size
        self.precision = precision
        self.profiles = layer_profiles(graph)
        # Interchangeable layers cost the same: each class is costed once, by its first layer.
        self.classes = LayerClasses(graph, self.profiles)
        c = constraints
        heads = tp_heads(self.profiles)
        head_gcd = math.gcd(*heads) if heads else 1
        ring = has_ring_attention(self.profiles)  # else cp cannot be costed
        world = cluster.world_size
        self.settings: list[tuple[int, int, int, bool]] = []
        # Every tp a plan on some of the nodes may use: it divides the heads (any tp without
        # attention) and that cluster's devices, which are at most ``world``.
        for tp in pinned(c.tp, list(range(1, world + 1))):
            if (c.max_tp and tp > c.max_tp) or (heads and head_gcd % tp):
                continue
            for cp in pinned(c.cp, divisors(graph.seq_len) if ring else [1]):
                if tp * cp > world:
                    continue
                for mbs in pinned(c.micro_batch_size, divisors(global_batch_size)):
                    for sp in ([False, True] if tp > 1 else [False]):
                        if c.sequence_parallel is None or sp == c.sequence_parallel:
                            self.settings.append((tp, cp, mbs, sp))
        self._per_group: dict[int, list[float]] = {}

    def _per_sample(self, g: int) -> list[float]:
        """Per class, the least device-seconds per sample of one of its layers on the
        cluster's group ``g`` (a layer's cost does not depend on how many nodes its group
        has)."""
        if g in self._per_group:
            return self._per_group[g]
        group = self.cluster.groups[g]
        least = [math.inf] * len(self.classes.representative)
        for tp, cp, mbs, sp in self.settings:
            try:
                config = ParallelConfig(tp=tp, cp=cp, micro_batch_size=mbs, sequence_parallel=sp)
            except ConfigError:
                continue
            for c, i in enumerate(self.classes.representative):
                cost = layer_cost(self.profiles[i], config, group, self.precision,
                                  self.graph.seq_len)
                least[c] = min(least[c], tp * cp * (cost.forward + cost.backward) / mbs)
        self._per_group[g] = least
        return least

    def of(self, counts: tuple[int, ...]) -> float:
        """No plan on ``counts[g]`` nodes of each group ``g`` has a shorter step (seconds)."""
        per_group = [self._per_sample(g) for g, n in enumerate(counts) if n]
        per_sample = sum(size * min(column) for size, column in
                         zip(self.classes.size, zip(*per_group, strict=True), strict=True))
        devices = sum(n * group.devices_per_node
                      for n, group in zip(counts, self.cluster.groups, strict=True))
        return self.global_batch_size * per_sample / devices


def with_fewer_nodes(cluster: Cluster, bound: WorkBound) -> Iterator[tuple[float, Cluster]]:
    """``cluster`` and every cluster of fewer of its whole nodes (each group keeps 0 or more,
    at least one node in all), with its bound, least bound first: best-first over the lattice
    of node counts (a node fewer never lowers the bound), so a caller that stops at a bound
    visits only what it needs."""
    full = tuple(g.nodes for g in cluster.groups)
    seen = {full}
    heap = [(bound.of(full), tuple(-n for n in full))]
    while heap:
        value, negative = heapq.heappop(heap)
        counts = tuple(-n for n in negative)
        yield value, _keep(cluster, counts)
        for g, n in enumerate(counts):
            fewer = counts[:g] + (n - 1,) + counts[g + 1:]
            if n > 0 and sum(fewer) > 0 and fewer not in seen:
                seen.add(fewer)
                heapq.heappush(heap, (bound.of(fewer), tuple(-x for x in fewer)))


def _keep(cluster: Cluster, counts: tuple[int, ...]) -> Cluster:
    """The first ``counts[g]`` nodes of each group ``g``; groups left with none are dropped."""
    if counts == tuple(g.nodes for g in cluster.groups):
        return cluster
    groups = [g if n == g.nodes else g.model_copy(update={"nodes": n})
              for g, n in zip(cluster.groups, counts, strict=True) if n]
    used = sum(counts)
    name = f"{cluster.name} ({used} of {cluster.num_nodes} nodes)"
    return cluster.model_copy(update={"groups": groups, "name": name})


def search_fewer_nodes(graph: ModelGraph, cluster: Cluster, *, global_batch_size: int,
                       precision: str, optimizer: str, constraints: Constraints,
                       time_limit_s: float | None, progress: Progress | None = None
                       ) -> tuple[SearchResult, Cluster]:
    """``search`` over ``cluster`` and its clusters of fewer whole nodes, least bound first,
    each pruned by the best plan found before it; returns the best result and the cluster it
    runs on (the whole cluster's result, with nothing found, when nothing fits anywhere).
    Its statistics add up every search; the lower bound is the least of what each left open,
    and of the bound of the first cluster not searched."""
    start = time.perf_counter()
    bound = WorkBound(graph, cluster, constraints, global_batch_size=global_batch_size,
                      precision=precision)
    totals = SearchStats()
    chosen: tuple[SearchResult, Cluster] | None = None
    whole: SearchResult | None = None
    lower = math.inf
    for value, nodes in with_fewer_nodes(cluster, bound):
        best = None if chosen is None else chosen[0].best
        incumbent = None if best is None else best.estimate.step_time
        left = None if time_limit_s is None else time_limit_s - (time.perf_counter() - start)
        pruned = incumbent is not None and value >= incumbent
        if pruned or (left is not None and left <= 0 and whole is not None):
            # This cluster and every one after it (their bounds are larger) cannot win, or
            # there is no time left to look at them.
            totals.timed_out = totals.timed_out or not pruned
            lower = min(lower, value)
            break
        say = progress if progress is None or nodes is cluster else (
            lambda line, name=nodes.name: progress(f"{name}: {line}"))
        result = search(graph, nodes, global_batch_size=global_batch_size,
                        precision=precision, optimizer=optimizer, constraints=constraints,
                        time_limit_s=left, progress=say, incumbent=incumbent)
        whole = whole or result
        s = result.stats
        for name in ("families", "shapes", "pruned_by_time", "pruned_by_memory", "solved",
                     "candidates", "models"):
            setattr(totals, name, getattr(totals, name) + getattr(s, name))
        totals.timed_out = totals.timed_out or s.timed_out
        if s.timed_out or result.best is not None or incumbent is not None:
            lower = min(lower, s.lower_bound)
        if result.best is not None and (incumbent is None
                                        or result.best.estimate.step_time < incumbent):
            chosen = (result, nodes)
    totals.solve_time_s = time.perf_counter() - start
    assert whole is not None  # the whole cluster has the least bound: it is searched first
    if chosen is None:
        whole.stats = totals
        return whole, cluster
    result, nodes = chosen
    assert result.best is not None
    totals.optimal = not totals.timed_out
    totals.lower_bound = min(lower, result.best.estimate.step_time)
    result.stats = totals
    return result, nodes
