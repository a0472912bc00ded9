"""Branch and bound over shapes, with a CP-SAT stage model inside each.

1. Every shape (global degrees, ZeRO stage, sequence parallelism, schedule, micro-batch
   size) gets a lower bound on its step time and on the memory its devices need in total,
   from per-layer costs alone (``bounds.shape_bound``). Shapes are visited in bound order.
2. A shape whose bound is not below the best step time found is pruned, and so is every later
   one (they are sorted); a shape whose devices cannot hold the model states in total is
   pruned for memory. Both bounds hold for every split and recomputation, so no pruned shape
   could have won.
3. Otherwise its CP-SAT stage model proposes splits in order of their bound; each is costed
   by ``estimate`` itself, until the bound of the next proposal reaches the best time found.

Without a time limit the result is optimal under the cost model; with one, the gap between the
best plan and the smallest bound not yet ruled out is reported.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import Estimate, estimate, memory_fit, repeated_blocks
from autopar.layer_profiles import has_ring_attention, layer_profiles, tp_heads
from autopar.solver import pp2
from autopar.solver.bounds import (
    ROUNDING,
    family_bound,
    has_bubble_bound,
    least_work,
    shape_bound,
)
from autopar.solver.constraints import Constraints
from autopar.solver.space import (
    Degrees,
    Shape,
    degrees,
    even_splits,
    representatives,
    shapes,
)
from autopar.solver.stage_model import Candidate, StageModel
from autopar.solver.tables import LayerClasses, ShapeTables
from autopar.solver.twins import Twins
from autopar.tracing import ModelGraph

Progress = Callable[[str], None]

LEAN_SHAPES = 3
"""Shapes whose least memory ``plan`` measures to explain an infeasible request."""

@dataclass
class Evaluated:
    """A configuration the search costed with ``estimate``."""

    config: ParallelConfig
    estimate: Estimate


@dataclass
class SearchStats:
    """What the search did."""

    families: int = 0
    """Families of shapes (degrees and micro-batch size) in the space."""
    shapes: int = 0
    """Shapes (global configurations) the search expanded and bounded."""
    pruned_by_time: int = 0
    pruned_by_memory: int = 0
    solved: int = 0
    """Shapes whose stage model was solved."""
    candidates: int = 0
    """Splits the stage models proposed and ``estimate`` costed."""
    models: int = 0
    """Models built for the solved shapes: fewer where shapes share one (``twins.py``)."""
    solve_time_s: float = 0.0
    lower_bound: float = 0.0
    """No configuration's step time is below this (seconds)."""
    optimal: bool = False
    timed_out: bool = False
    """The time limit ended the search before it could prove anything."""

    def gap(self, best: float) -> float:
        return max(0.0, (best - self.lower_bound) / best) if best > 0 else 0.0


@dataclass
class SearchResult:
    best: Evaluated | None
    runners_up: list[Evaluated]
    stats: SearchStats
    tables_for_memory: list[ShapeTables] = field(default_factory=list)
    """The ``LEAN_SHAPES`` shapes that need the least memory (to explain an infeasible
    request)."""


def search(graph: ModelGraph, cluster: Cluster, *, global_batch_size: int, precision: str,
           optimizer: str, constraints: Constraints, time_limit_s: float | None,
           runners_up: int = 3, progress: Progress | None = None,
           incumbent: float | None = None) -> SearchResult:
    """The fastest configuration of ``graph`` on ``cluster`` that fits, under the cost model.

    Best-first: a heap holds families of shapes (their degrees) and single shapes, each with a
    lower bound; the smallest is expanded (a family into its shapes) or solved (a shape) until
    the smallest bound left is no better than the best step time found. ``incumbent``, a step
    time found elsewhere (a plan on other nodes of the cluster), prunes like one found here:
    ``best`` is then None if nothing beats it, and ``stats.lower_bound`` is at most it.
    """
    start = time.perf_counter()
    deadline = None if time_limit_s is None else start + time_limit_s
    profiles = layer_profiles(graph)
    classes = LayerClasses(graph, profiles)
    costs: dict[tuple, object] = {}
    stats = SearchStats()
    num_layers = len(profiles)

    def tables(shape: Shape) -> ShapeTables:
        return ShapeTables(graph, profiles, classes, cluster, shape, global_batch_size,
                           precision, optimizer, constraints.recompute,
                           constraints.memory_headroom, costs)

    heap: list[tuple[float, tuple, Degrees | Shape, ShapeTables | None]] = []
    memory_need: list[tuple[float, Shape]] = []
    for d in degrees(cluster, constraints, global_batch_size=global_batch_size,
                     num_layers=num_layers, heads=tp_heads(profiles),
                     ring_attention=has_ring_attention(profiles), seq_len=graph.seq_len):
        family = [tables(s) for s in representatives(d, constraints,
                                                     global_batch_size=global_batch_size,
                                                     num_layers=num_layers)]
        if not family:
            continue
        stats.families += 1
        bound, fits, need = family_bound(family)
        memory_need.append((need, family[-1].shape))
        if fits:
            heapq.heappush(heap, (bound, _order(d), d, None))
        else:
            stats.pruned_by_memory += 1

    per_shape: dict[Shape, Evaluated] = {}
    _first_plans(heap, tables, constraints, global_batch_size, num_layers, graph, cluster,
                 precision, optimizer, stats, per_shape, deadline)
    best = min(per_shape.values(), key=_key, default=None)
    if progress:
        progress(f"{stats.families} families of shapes bounded, {len(per_shape)} plain "
                 f"configurations fit" + (f"; best {best.estimate.step_time:.3f} s/step, "
                                          f"{_describe(best.config)}" if best else ""))
    twins: dict[tuple, Twins] = {}
    twin_of: dict[Shape, Twins] = {}
    sharpened: set[Shape] = set()
    stalled: set[tuple] = set()  # signatures whose model ran out of its slice last time
    stopped_at: float | None = None
    fresh_next = False

    def unsharpened(shape: Shape, t: ShapeTables) -> bool:
        """Whether the shape's lazy pipeline term is still to be added (before its first
        solve)."""
        return shape not in twin_of and shape not in sharpened and has_bubble_bound(t)

    while heap:
        bound, _, item, t = _pop(heap, stalled if fresh_next else set(), _limit(best, incumbent),
                                 unsharpened)
        if bound >= _limit(best, incumbent):
            heapq.heappush(heap, (bound, _order(item), item, t))
            break
        if deadline is not None and time.perf_counter() >= deadline:
            heapq.heappush(heap, (bound, _order(item), item, t))
            stopped_at = bound
            break
        if isinstance(item, Degrees):
            for shape in shapes(item, constraints, global_batch_size=global_batch_size,
                                num_layers=num_layers):
                stats.shapes += 1
                st = tables(shape)
                least, fits = shape_bound(st)
                if fits:
                    heapq.heappush(heap, (max(bound, least), _order(shape), shape, st))
                else:
                    stats.pruned_by_memory += 1
            continue
        assert t is not None and isinstance(item, Shape)
        if unsharpened(item, t):
            # About to be solved: first the lazy pipeline term (the interleaved bubble or the
            # whole-layer fill, too slow to compute for every shape), which may put it back
            # higher.
            sharpened.add(item)
            sharper, _ = shape_bound(t, bubble=True, enough=_limit(best, incumbent))
            if sharper > bound:
                heapq.heappush(heap, (sharper, _order(item), item, t))
                continue
        if item not in twin_of:
            stats.solved += 1
            # Shapes with one signature share one model (twins.py); a shape that joins late
            # first costs what the model proposed before it came.
            twin = twins.get(t.signature)
            if item not in per_shape and twin is None:
                # Else the first plans costed it already, or a twin's was costed when the
                # model was built (twins read the same figures: the same estimate).
                _try_uniform(item, graph, cluster, constraints, global_batch_size, precision,
                             optimizer, stats, per_shape)
            if twin is None:
                twin = twins[t.signature] = Twins.of(t)
                stats.models += 1
            twin_of[item] = twin
            for candidate in twin.attach(item):
                _cost_candidate(candidate, item, graph, cluster, constraints,
                                global_batch_size, precision, optimizer, stats, per_shape)
        twin = twin_of[item]
        if isinstance(twin.model, pp2.SplitSearch) and twin.model.inexact:
            twin.model = StageModel(t)
        resume = _solve_shape(twin, item, graph, cluster, constraints, global_batch_size,
                              precision, optimizer, deadline, stats, per_shape, incumbent)
        if resume is not None:
            # Not done: back on the heap at the bound of what it has left to propose.
            heapq.heappush(heap, (max(bound, resume), _order(item), item, t))
        # A shape whose model ran out of its slice unanswered is not visited again before
        # something else is (``_pop``).
        fresh_next = twin.model.stalled
        (stalled.add if fresh_next else stalled.discard)(t.signature)
        found = min((per_shape[s] for s in twin.shapes if s in per_shape), key=_key,
                    default=None)
        if found is not None and (best is None or _key(found) < _key(best)):
            best = found
            if progress:
                progress(f"best so far: {best.estimate.step_time:.3f} s/step, "
                         f"{_describe(best.config)}")
    stats.pruned_by_time = len(heap)
    stats.solve_time_s = time.perf_counter() - start
    stats.timed_out = stopped_at is not None
    if best is not None or incumbent is not None:
        stats.optimal = stopped_at is None
        stats.lower_bound = min([_limit(best, incumbent)] + [b for b, *_ in heap[:1]])
    others = sorted((e for e in per_shape.values() if e is not best), key=_key)
    memory_need.sort(key=lambda x: (x[0], x[1]))
    lean = [tables(shape) for _, shape in memory_need[:LEAN_SHAPES]]
    return SearchResult(best, others[:runners_up], stats, lean)


def _pop(heap: list, stalled: set[tuple], limit: float,
         unsharpened: Callable[[Shape, ShapeTables], bool]) -> tuple:
    """The heap's least entry; or, if that is a shape whose model (shared by its twins, so
    by signature) is ``stalled``, the shape below ``limit`` with the fewest splits whose
    model is not (among those, first the shapes whose bound is already sharp, not
    ``unsharpened``, then the least bound; a family if no shape is left): after a stalled
    visit, the next goes where a plan is quickest to find, so that one model slow to solve
    cannot take the whole time limit and a better plan prunes sooner. Only the order of
    visits changes; what the search proves does not."""
    def is_stalled(entry: tuple) -> bool:
        return entry[3] is not None and entry[3].signature in stalled

    if not is_stalled(heap[0]):
        return heapq.heappop(heap)
    # Shapes before families, fewest splits first; a signature is read (and so built) only
    # for the entries looked at.
    below = sorted((i for i, e in enumerate(heap) if e[0] < limit),
                   key=lambda i: (heap[i][3] is None, _splits(heap[i][3]),
                                  heap[i][3] is not None and unsharpened(heap[i][2], heap[i][3]),
                                  heap[i][:2]))
    chosen = next((i for i in below if not is_stalled(heap[i])), None)
    if chosen is None:
        return heapq.heappop(heap)
    entry = heap[chosen]
    heap[chosen] = heap[-1]
    heap.pop()
    heapq.heapify(heap)
    return entry


def _splits(t: ShapeTables | None) -> int:
    """How many contiguous splits of the layers a shape has (0 for a family)."""
    return 0 if t is None else math.comb(len(t.layer_class) - 1, t.chunks - 1)


def _first_plans(heap: list, tables: Callable[[Shape], ShapeTables],
                 constraints: Constraints, global_batch_size: int, num_layers: int,
                 graph: ModelGraph, cluster: Cluster, precision: str, optimizer: str,
                 stats: SearchStats, per_shape: dict[Shape, Evaluated],
                 deadline: float | None) -> None:
    """Cost, before the search, the plain configurations a person would try first: Megatron's
    even split, one recomputation mode for every layer (the cheapest that fits), sequence
    parallelism with tp, the distributed optimizer (ZeRO-1). A good plan known from the
    start prunes most of the space; the search then only has to prove or improve it.

    1. Folklore first: one sample per micro-batch, and either no pipeline or tensor
       parallelism across one node or half of one with context parallelism of 1 or 2 at every
       pipeline depth; 1F1B and interleaving with every chunk
       count that splits the blocks evenly (as Megatron-LM requires).
    2. Then every family in bound order, the same configurations and zero-bubble on 1F1B's
       stages (with ZeRO-3 where ZeRO-1 does not fit).
    3. Then again, interleaving with the other chunk counts: the layers spread as evenly as
       they go, the extra ones on the first chunks or on the last.

    The folklore is costed whatever the time limit (so the plan never loses to it); each
    pass of the rest stops at the first family whose bound is no better than the best plan,
    and both once half of the time left after bounding is spent.
    """
    bounded = [(bound, item) for bound, _, item, _ in sorted(heap) if isinstance(item, Degrees)]
    families = [family for _, family in bounded]
    blocks = sum(repeated_blocks(graph))
    node = min(g.devices_per_node for g in cluster.groups)
    node_tp = max((f.tp for f in families if f.tp <= node), default=1)
    folklore = [f for f in families if f.micro_batch_size == 1 and (
        f.pp == 1 or (f.cp in (1, 2) and f.tp in (node_tp, node_tp // 2)))]

    def best_time() -> float:
        return min((e.estimate.step_time for e in per_shape.values()), default=math.inf)

    def zeros(family: Degrees) -> list[int]:
        """The ZeRO stages a person would try, in order: ZeRO-1 where there is data
        parallelism (else none), then ZeRO-3 if that does not fit; the pinned one alone."""
        if constraints.zero_stage is not None:
            return [constraints.zero_stage]
        return [min(1, family.dp * family.cp - 1), 3]

    def megatron(shape: Shape, zero: int, schedules: tuple[str, ...]) -> bool:
        """Whether ``shape`` is what a person would write, or what the pins leave of it."""
        c = constraints
        return ((c.schedule is not None or shape.schedule in (*schedules, "interleaved"))
                and (c.sequence_parallel is not None
                     or shape.sequence_parallel == (shape.tp > 1))
                and shape.zero_stage == zero)

    def cost_family(family: Degrees, zero: int, schedules: tuple[str, ...] = ("1f1b",),
                    uneven: bool = False) -> bool:
        """Cost the family's Megatron-style configurations at ``zero`` (the even split, one
        chunk per device for ``schedules``), or with ``uneven`` its interleaving whose chunks
        do not divide the blocks (``even_splits``); whether any fitted."""
        found = False
        for shape in shapes(family, constraints, global_batch_size=global_batch_size,
                            num_layers=num_layers):
            divides = shape.schedule != "interleaved" or blocks % (
                shape.pp * shape.virtual_stages) == 0
            if not megatron(shape, zero, schedules) or divides == uneven:
                continue
            t = tables(shape)
            best = best_time()
            bound, fits = shape_bound(t)
            if fits and bound < best and shape.virtual_stages == 1 and has_bubble_bound(t):
                # The whole-layer fill (ms) is cheaper than a deep pipeline's estimate; the
                # interleaved bubble bound can take longer than the estimate it would spare.
                bound, fits = shape_bound(t, bubble=True)
            if fits and bound < best:  # what the bound rules out cannot beat the best so far
                if divides:
                    _try_uniform(shape, graph, cluster, constraints, global_batch_size,
                                 precision, optimizer, stats, per_shape)
                else:  # Megatron's split needs the blocks to divide among the chunks
                    for split in even_splits(num_layers, t.chunks):
                        _try_uniform(shape, graph, cluster, constraints, global_batch_size,
                                     precision, optimizer, stats, per_shape, split=split)
                if len(cluster.groups) > 1:
                    _try_uniform(shape, graph, cluster, constraints, global_batch_size,
                                 precision, optimizer, stats, per_shape,
                                 split=_speed_split(t))
                found = found or shape in per_shape
        return found

    budget = None if deadline is None else time.perf_counter() + (
        deadline - time.perf_counter()) / 2
    for family in folklore:
        # Whatever the time limit: the plan never loses to what a person writes by hand.
        cost_family(family, zeros(family)[0])
    # Zero-bubble (ZB-H1, in torch's pipelining and Megatron-core) on 1F1B's stages too: on
    # deep pipelines it is often the better of the two.
    # Then, in a second pass, the uneven interleaved splits (many shapes, rarely the best).
    both = ("1f1b", "zero_bubble")
    for uneven in (False, True):
        for bound, family in bounded:
            if budget is not None and time.perf_counter() >= budget:
                return
            if bound >= best_time():
                break  # in bound order: no family left can beat the best
            if uneven or family not in folklore:
                for zero in zeros(family):  # the next only where this one fitted nothing
                    if cost_family(family, zero, both, uneven):
                        break


def _try_uniform(shape: Shape, graph: ModelGraph, cluster: Cluster, constraints: Constraints,
                 global_batch_size: int, precision: str, optimizer: str, stats: SearchStats,
                 per_shape: dict[Shape, Evaluated], split: tuple[int, ...] | None = None
                 ) -> None:
    """Cost the configuration a person would write first (Megatron's even split, or
    ``split``, one recomputation mode for every layer, the cheapest that fits): a good plan
    found early prunes more. Each mode's memory is checked first (``memory_fit``); only the
    first that fits gets an ``estimate``, whose pipeline simulation is the dear part."""
    for mode in ("none", "selective", "full"):
        if mode not in constraints.recompute:
            continue
        try:
            config = (shape.config(recompute=mode) if split is None else
                      shape.config(recompute=mode, layers_per_stage=split))
            peak, capacity = memory_fit(graph, cluster, config,
                                        global_batch_size=global_batch_size,
                                        precision=precision, optimizer=optimizer)
        except ConfigError:
            return
        stats.candidates += 1
        if not _room(peak, capacity, constraints.memory_headroom):
            continue  # what ``_fits`` would say of its estimate
        est = estimate(graph, cluster, config, global_batch_size=global_batch_size,
                       precision=precision, optimizer=optimizer)
        _record(shape, Evaluated(config, est), per_shape)
        return


def _speed_split(t: ShapeTables) -> tuple[int, ...]:
    """Layers per chunk in proportion to the speed of the chunk's node group (the inverse of
    the whole model's least work on it), rounded by largest remainder with a layer at least
    in each: what a person gives the faster devices of a heterogeneous cluster."""
    n, k, p = len(t.layer_class), t.chunks, t.shape.pp
    work = {id(g): sum(size * w for size, w in zip(t.classes.size, least_work(t, g),
                                                     strict=True))
            for g in t.distinct_groups}
    speed = [1 / work[id(t.groups[c % p])] for c in range(k)]
    share = [n * x / sum(speed) for x in speed]
    sizes = [max(1, math.floor(x)) for x in share]
    while sum(sizes) < n:
        sizes[max(range(k), key=lambda i: (share[i] - sizes[i], -i))] += 1
    while sum(sizes) > n:
        sizes[max((i for i in range(k) if sizes[i] > 1),
                  key=lambda i: (sizes[i] - share[i], i))] -= 1
    return tuple(sizes)


def _record(shape: Shape, done: Evaluated, per_shape: dict[Shape, Evaluated]) -> None:
    if shape not in per_shape or _key(done) < _key(per_shape[shape]):
        per_shape[shape] = done


CANDIDATES_PER_VISIT = 4
"""Splits one visit to a shape may cost before it goes back on the heap, so that no shape
whose bound is loose starves the others. A visit also ends at the first split that beats every
plan found so far: the search reports it, and prunes with it, at once."""


def _solve_shape(twin: Twins, shape: Shape, graph: ModelGraph, cluster: Cluster,
                 constraints: Constraints, global_batch_size: int, precision: str,
                 optimizer: str, deadline: float | None, stats: SearchStats,
                 per_shape: dict[Shape, Evaluated], incumbent: float | None) -> float | None:
    """Let the shape's model propose splits below the best time found so far (here or the
    ``incumbent``), costing each
    with ``estimate`` for the shape and its twins. Returns None once the model is exhausted,
    or the bound of what it has left when this visit's share (or the time limit) ran out, or
    at the first split that beats the best plan (so that the search reports it at once)."""
    model = twin.model
    for _ in range(CANDIDATES_PER_VISIT):
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            return model.last_bound
        known = [e.estimate.step_time for e in per_shape.values()]
        if incumbent is not None:
            known.append(incumbent)
        limit = min(known, default=None)
        candidate, proven = model.solve(limit, left)
        if candidate is None:
            return None if proven else model.last_bound
        twin.proposed.append(candidate)
        for other in twin.shapes:
            if other != shape:
                _cost_candidate(candidate, other, graph, cluster, constraints,
                                global_batch_size, precision, optimizer, stats, per_shape)
        est = _cost_candidate(candidate, shape, graph, cluster, constraints,
                              global_batch_size, precision, optimizer, stats, per_shape)
        exact = est.step_time <= candidate.bound * (1 + ROUNDING)
        if isinstance(model, pp2.SplitSearch) and not (
                exact and _fits(est, constraints.memory_headroom)):
            # Its best split needs recomputation to fit, or exposes sync: the bound stands,
            # the stage model takes over.
            model.inexact = True
            return model.last_bound
        if _fits(est, constraints.memory_headroom) and (limit is None or est.step_time < limit):
            return model.last_bound
    return model.last_bound


def _cost_candidate(candidate: Candidate, shape: Shape, graph: ModelGraph, cluster: Cluster,
                    constraints: Constraints, global_batch_size: int, precision: str,
                    optimizer: str, stats: SearchStats,
                    per_shape: dict[Shape, Evaluated]) -> Estimate:
    """``estimate`` of a proposed split on ``shape``, recorded if it fits."""
    stats.candidates += 1
    config = candidate.config(shape)
    est = estimate(graph, cluster, config, global_batch_size=global_batch_size,
                   precision=precision, optimizer=optimizer)
    if _fits(est, constraints.memory_headroom):
        _record(shape, Evaluated(config, est), per_shape)
    return est


def _order(item: Degrees | Shape) -> tuple:
    """Among equal bounds: families before their shapes, then fewer stages and smaller tp
    (less to lose to bubbles and collectives), then the fields in order: deterministic."""
    kind = 0 if isinstance(item, Degrees) else 1
    return (kind, item.pp, item.tp, item.cp, tuple(item.__dict__.values()))


def _limit(best: Evaluated | None, incumbent: float | None) -> float:
    """The step time a configuration must beat to matter."""
    here = math.inf if best is None else best.estimate.step_time
    return here if incumbent is None else min(here, incumbent)


def _key(e: Evaluated) -> tuple:
    """Order of preference: faster, then less memory, then the configuration's own order (so
    that ties resolve the same way on every run)."""
    return (e.estimate.step_time, e.estimate.peak_memory, e.config.model_dump_json())


def _fits(est: Estimate, headroom: float) -> bool:
    return est.fits and _room(est.peak_memory, est.capacity, headroom)


def _room(peak: float, capacity: float, headroom: float) -> bool:
    """Whether ``peak`` bytes leave ``headroom`` of ``capacity`` free."""
    return peak <= capacity * (1.0 - headroom)


def _describe(config: ParallelConfig) -> str:
    return (f"dp={config.dp} tp={config.tp} pp={config.pp} cp={config.cp} "
            f"zero={config.zero_stage} {config.schedule}")
