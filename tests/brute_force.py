"""The reference the planner's exactness tests compare with: every valid configuration that
obeys the pins, costed by ``estimate()``, the fastest that fits kept.

Valid means what ``ParallelConfig`` and ``estimate()`` accept; the pins are read as the planner
reads them (``Constraints``). Two pins are required: cp (the planner takes cp > 1 only for
models whose attention it can cost the ring exchange of, which ``estimate()`` does not check)
and no idle devices (the reference does not try fewer nodes). Small spaces only: every split
of the layers into ``pp x virtual_stages`` chunks and every per-layer choice among the
allowed recomputation modes are tried. The schedules and ``_allowed`` restate the planner's
on purpose: a reference that imported the search space would share its mistakes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import Estimate, estimate
from autopar.solver.constraints import Constraints
from autopar.solver.space import divisors
from autopar.tracing import ModelGraph

SCHEDULES = ("gpipe", "1f1b", "zero_bubble", "interleaved")


def _allowed(pin: Any, options: list[Any]) -> list[Any]:
    return [o for o in options if pin is None or o == pin]


def _schedules(rules: Constraints, pp: int, layers: int) -> Iterator[tuple[str, int]]:
    for schedule in _allowed(rules.schedule, list(SCHEDULES)):
        chunks = range(2, layers // pp + 1) if schedule == "interleaved" else (1,)
        yield from ((schedule, v) for v in _allowed(rules.virtual_stages, list(chunks)))


def _splits(layers: int, chunks: int) -> Iterator[tuple[int, ...]]:
    for cuts in itertools.combinations(range(1, layers), chunks - 1):
        yield tuple(b - a for a, b in itertools.pairwise((0, *cuts, layers)))


def configurations(graph: ModelGraph, cluster: Cluster, global_batch_size: int,
                   pins: dict[str, Any]) -> Iterator[ParallelConfig]:
    """Every configuration the pins allow that ``ParallelConfig`` accepts (``estimate()``
    may still refuse some)."""
    rules = Constraints.of(pins)
    if rules.cp is None or rules.allow_idle_devices:
        raise ValueError("pin cp, and leave idle devices out: the reference enumerates "
                         "neither")
    n, world, cp = len(graph.layers), cluster.world_size, rules.cp
    for tp, pp in itertools.product(_allowed(rules.tp, divisors(world)), divisors(world)):
        if world % (tp * pp * cp) or (rules.max_tp and tp > rules.max_tp):
            continue
        dp = world // (tp * pp * cp)
        if (rules.pp and pp != rules.pp) or (rules.dp and dp != rules.dp):
            continue
        if global_batch_size % dp:
            continue
        for zero, sp, mbs in itertools.product(
                _allowed(rules.zero_stage, [0, 1, 2, 3]),
                _allowed(rules.sequence_parallel, [False, True] if tp > 1 else [False]),
                _allowed(rules.micro_batch_size, divisors(global_batch_size // dp))):
            for schedule, v in _schedules(rules, pp, n):
                for split in _splits(n, pp * v) if pp > 1 else [None]:
                    for modes in itertools.product(rules.recompute, repeat=n):
                        try:
                            yield ParallelConfig(
                                dp=dp, tp=tp, pp=pp, cp=cp, zero_stage=zero,
                                sequence_parallel=sp, schedule=schedule, virtual_stages=v,
                                layers_per_stage=split, recompute=modes, micro_batch_size=mbs)
                        except ConfigError:
                            continue


def fastest(graph: ModelGraph, cluster: Cluster, global_batch_size: int,
            pins: dict[str, Any]) -> Estimate | None:
    """The fastest estimate that fits within the pins' headroom, or None if none does."""
    headroom = Constraints.of(pins).memory_headroom
    best = None
    for config in configurations(graph, cluster, global_batch_size, pins):
        try:
            e = estimate(graph, cluster, config, global_batch_size=global_batch_size)
        except ConfigError:
            continue
        if (e.fits and e.peak_memory <= e.capacity * (1 - headroom)
                and (best is None or e.step_time < best.step_time)):
            best = e
    return best
