"""The global choices the solver enumerates: one ``Shape`` per combination of degrees, ZeRO
stage, sequence parallelism, schedule and micro-batch size that can run at all.

Everything a shape fixes is global (the same on every device); what is left for the CP-SAT
stage model is per layer: where the stage boundaries go and how each layer is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from autopar.cost_models.pipeline import SCHEDULES

from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import stage_groups
from autopar.solver.constraints import Constraints


@dataclass(frozen=True, order=True)
class Shape:
    """One point of the global search space (the split and recomputation come later)."""

    tp: int
    pp: int
    cp: int
    dp: int
    zero_stage: int
    sequence_parallel: bool
    schedule: str
    virtual_stages: int
    micro_batch_size: int

    def config(self, **per_layer: object) -> ParallelConfig:
        """The ParallelConfig of this shape, with ``layers_per_stage``/``recompute`` added."""
        return ParallelConfig(dp=self.dp, zero_stage=self.zero_stage, tp=self.tp,
                              sequence_parallel=self.sequence_parallel, pp=self.pp,
                              schedule=self.schedule, virtual_stages=self.virtual_stages,
                              cp=self.cp, micro_batch_size=self.micro_batch_size,
                              **per_layer)

    def micro_batches(self, global_batch_size: int) -> int:
        return global_batch_size // (self.dp * self.micro_batch_size)


def divisors(n: int) -> list[int]:
    """Every divisor of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def pinned(value: int | None, options: list[int]) -> list[int]:
    """``options``, or only ``value`` among them where a constraint pins it."""
    return [o for o in options if value is None or o == value]


@dataclass(frozen=True, order=True)
class Degrees:
    """The parallel degrees and micro-batch size a family of shapes shares."""

    tp: int
    pp: int
    cp: int
    dp: int
    micro_batch_size: int


def degrees(cluster: Cluster, constraints: Constraints, *, global_batch_size: int,
            num_layers: int, heads: list[int], ring_attention: bool, seq_len: int
            ) -> Iterator[Degrees]:
    """Every combination of degrees that can run ``num_layers`` layers on ``cluster``.

    Degrees multiply to the cluster's device count; tp divides every layer's attention heads
    where the trace found any (and is at most ``max_tp``); cp divides the sequence, and is 1
    unless ``ring_attention`` (an attention op whose key/value heads the trace found); dp x
    micro-batch size divides the global batch; pp leaves at least one layer per stage; on a
    heterogeneous cluster every stage lies within one node group.
    """
    c = constraints
    world = cluster.world_size
    head_gcd = math.gcd(*heads) if heads else 0
    for tp in pinned(c.tp, divisors(world)):
        if (c.max_tp and tp > c.max_tp) or (head_gcd and head_gcd % tp):
            continue
        for cp in pinned(c.cp, divisors(world // tp)):
            # Context parallelism is costed by its ring exchange of attention K/V: without
            # attention's key/value heads found in the trace there is nothing to cost it by.
            if seq_len % cp or (cp > 1 and not ring_attention):
                continue
            for pp in pinned(c.pp, divisors(world // (tp * cp))):
                dp = world // (tp * cp * pp)
                if pp > num_layers or (c.dp is not None and dp != c.dp):
                    continue
                if global_batch_size % dp or not _stages_fit(cluster, tp, cp, dp, pp):
                    continue
                for mbs in pinned(c.micro_batch_size, divisors(global_batch_size // dp)):
                    yield Degrees(tp, pp, cp, dp, mbs)


def shapes(d: Degrees, constraints: Constraints, *, global_batch_size: int,
           num_layers: int) -> Iterator[Shape]:
    """The shapes of one family: ZeRO stage, sequence parallelism, schedule and virtual
    stages. Choices that change nothing are not repeated: one ZeRO stage without data
    parallelism, one schedule without pipelining (each the pinned one, if pinned), no
    sequence parallelism without tp; the interleaved schedule needs micro-batches divisible by
    pp and a layer per chunk."""
    m = global_batch_size // (d.dp * d.micro_batch_size)
    yield from _variants(constraints, d.tp, d.pp, d.cp, d.dp, d.micro_batch_size, m,
                         num_layers)


def representatives(d: Degrees, constraints: Constraints, *, global_batch_size: int,
                    num_layers: int) -> list[Shape]:
    """One shape per sequence-parallel setting of a family, at its highest ZeRO stage (the one
    needing the least memory) and first schedule. Enough to bound the whole family (layer
    costs depend on tp, sp, cp and micro-batch size)."""
    c = constraints
    m = global_batch_size // (d.dp * d.micro_batch_size)
    schedule = next(_schedules(c, d.pp, m, num_layers), None)
    zeros = _zero_stages(c, d.dp, d.cp)
    if schedule is None:
        return []
    sps = [sp for sp in ([False, True] if d.tp > 1 else [False])
           if c.sequence_parallel is None or sp == c.sequence_parallel]
    return [Shape(d.tp, d.pp, d.cp, d.dp, max(zeros), sp, schedule[0], schedule[1],
                  d.micro_batch_size) for sp in sps]


def _variants(c: Constraints, tp: int, pp: int, cp: int, dp: int, mbs: int, m: int,
              num_layers: int) -> Iterator[Shape]:
    sps = [False, True] if tp > 1 else [False]
    for zero in _zero_stages(c, dp, cp):
        for sp in sps:
            if c.sequence_parallel is not None and sp != c.sequence_parallel:
                continue
            for schedule, v in _schedules(c, pp, m, num_layers):
                yield Shape(tp, pp, cp, dp, zero, sp, schedule, v, mbs)


def even_splits(layers: int, chunks: int) -> list[tuple[int, ...]]:
    """The layers spread as evenly as the chunks allow, the extra ones on the first chunks
    or on the last (interleaving holds more micro-batches on the first: the last may be what
    fits). The splits the first plans try where Megatron's cannot divide the blocks among
    the chunks, and where the pp = 2 split search starts."""
    base, extra = divmod(layers, chunks)
    front = tuple(base + (i < extra) for i in range(chunks))
    return [front] if not extra else [front, front[::-1]]


def _zero_stages(c: Constraints, dp: int, cp: int) -> list[int]:
    """The ZeRO stages to try. Without data parallelism (dp x cp = 1) there is nothing to shard
    and every stage costs what none does: one shape, at the pinned stage if there is one, so
    that a pin keeps the configurations that obey it literally."""
    if dp * cp > 1:
        return pinned(c.zero_stage, [0, 1, 2, 3])
    return [0 if c.zero_stage is None else c.zero_stage]


def _schedules(c: Constraints, pp: int, m: int, num_layers: int) -> Iterator[tuple[str, int]]:
    if pp == 1:
        # No pipeline: every schedule runs the same. One shape, named by the pinned schedule
        # if there is one (interleaving needs two stages or more).
        if c.schedule != "interleaved" and c.virtual_stages in (None, 1):
            yield c.schedule or "1f1b", 1
        return
    for schedule in SCHEDULES:
        if c.schedule is not None and schedule != c.schedule:
            continue
        if schedule != "interleaved":
            if c.virtual_stages in (None, 1):
                yield schedule, 1
            continue
        if m % pp:
            continue
        for v in range(2, num_layers // pp + 1):
            if c.virtual_stages is None or v == c.virtual_stages:
                yield schedule, v


def _stages_fit(cluster: Cluster, tp: int, cp: int, dp: int, pp: int) -> bool:
    if len(cluster.groups) == 1:
        return True
    try:
        stage_groups(cluster, ParallelConfig(tp=tp, cp=cp, dp=dp, pp=pp))
    except ConfigError:
        return False
    return True
