"""Step time of a pipeline-parallel schedule whose stages cost different amounts.

``simulate`` runs a small discrete-event simulation. Each device executes its operations in the
order its schedule prescribes; an operation starts once the device is free and its inputs have
arrived:

- forward ``F(k, i)`` of micro-batch ``i`` on (virtual) stage ``k`` needs ``F(k-1, i)`` plus
  ``stages[k-1].send``;
- backward ``B(k, i)`` needs ``B(k+1, i)`` plus ``stages[k].send`` (the last stage: its own
  ``F(k, i)``);
- for ``zero_bubble``, backward is split into ``B`` (input gradient, on the critical path) and
  ``W`` (weight gradient), which only needs ``B(k, i)`` and fills idle time.

Sends are asynchronous: they delay the receiver but do not occupy the sender's compute. GPipe
and interleaved pay each boundary's send twice per step (fill and drain); 1F1B's warm-up leaves
no slack, so its steady state also waits on sends, as Megatron's blocking 1F1B exchange does;
zero_bubble's deferred weight gradients absorb most of that. With a fixed per-device order the
simulation is exact, so for equal stages it reproduces the closed forms (see
``docs/cost_models.md``): GPipe and 1F1B take ``(m+p-1)(f+b)``, Megatron's
interleaved schedule has a bubble of ``(p-1)(f+b)/v``, ZB-H1 one of ``(p-1)(f+b-2w)``
(Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, arXiv:2401.10241, Table 2, where the
backward ``b`` = input gradient ``T_B`` + weight gradient ``T_W = w``; it holds for ``w <= b/2``
and ``m >= p``).

Layout for ``interleaved``: ``stages`` lists the ``p * v`` virtual stages in model order; virtual
stage ``k`` is chunk ``k // p`` on device ``k % p`` (Megatron's layout), and its costs are that
chunk's. ``in_flight`` then has one entry per device counting (micro-batch, chunk) activations,
each 1/v of a device's layers. For the other schedules ``stages`` are the devices in order.
"""

from __future__ import annotations

import array
import collections
import functools
import heapq
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from autopar.errors import AutoparError

Schedule = Literal["gpipe", "1f1b", "interleaved", "zero_bubble"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)

# An operation: (kind, virtual stage, micro-batch); kind is "F", "B" or "W".
_Op = tuple[str, int, int]


class PipelineError(AutoparError):
    """A pipeline-schedule input is invalid: stage costs, micro-batch count or schedule."""


@dataclass(frozen=True)
class StageCost:
    """Per-micro-batch costs of one pipeline stage (for ``interleaved``: one virtual chunk)."""

    forward: float  # s per micro-batch on this stage
    backward: float  # s per micro-batch (input-grad + weight-grad)
    backward_weight: float = 0.0  # part of `backward` that is weight-gradient; 0 -> backward/2
    send: float = 0.0  # s to send one micro-batch's activation (and its gradient back) onward

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "backward_weight", "send"):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                raise PipelineError(f"StageCost.{name}={value!r} must be a finite number >= 0")
        if self.backward_weight > self.backward:
            raise PipelineError(
                f"StageCost.backward_weight={self.backward_weight!r} exceeds "
                f"backward={self.backward!r}: it is the weight-gradient part of backward"
            )

    @property
    def weight_grad(self) -> float:
        """The weight-gradient time zero_bubble defers (half the backward when not given)."""
        return self.backward_weight if self.backward_weight > 0 else self.backward / 2


@dataclass(frozen=True)
class PipelineResult:
    """What one optimizer step of the pipeline costs."""

    step_time: float  # s for all micro-batches of one optimizer step through the pipeline
    bubble_time: float  # step_time - busiest device's pure compute
    in_flight: list[int]  # peak micro-batches whose activations each device holds at once


def _gpipe_order(device: int, p: int, m: int) -> list[_Op]:
    """All forwards, then all backwards, in micro-batch order (torch's ScheduleGPipe)."""
    return [("F", device, i) for i in range(m)] + [("B", device, i) for i in range(m)]


def _one_f_one_b_order(device: int, p: int, m: int) -> list[_Op]:
    """PipeDream-flush / Megatron 1F1B: p-s-1 warm-up forwards, then F/B pairs, then cool-down."""
    warmup = min(p - device - 1, m)
    order: list[_Op] = [("F", device, i) for i in range(warmup)]
    for i in range(m - warmup):
        order += [("F", device, warmup + i), ("B", device, i)]
    return order + [("B", device, i) for i in range(m - warmup, m)]


def _interleaved_order(device: int, p: int, v: int, m: int) -> list[_Op]:
    """Megatron's interleaved 1F1B (``forward_backward_pipelining_with_interleaving``).

    Forward slot ``j`` runs micro-batch ``(j // (p v)) p + j % p`` on chunk ``(j // p) % v``;
    backward slot ``j`` the same micro-batch on chunk ``v - 1 - (j // p) % v``. Warm-up is
    ``2(p - d - 1) + (v - 1) p`` forward slots (all of them when m == p), then F/B pairs.
    """
    total = m * v

    def slot(j: int, forward: bool) -> _Op:
        chunk = (j // p) % v
        micro_batch = (j // (p * v)) * p + j % p
        if not forward:
            chunk = v - 1 - chunk
        return ("F" if forward else "B", chunk * p + device, micro_batch)

    warmup = total if m == p else min(2 * (p - device - 1) + (v - 1) * p, total)
    order = [slot(j, True) for j in range(warmup)]
    for j in range(total - warmup):
        order += [slot(warmup + j, True), slot(j, False)]
    return order + [slot(j, False) for j in range(total - warmup, total)]


class _Simulation:
    """Discrete-event run of fixed per-device orders; always starts the earliest-startable op.

    Starting the globally earliest op first keeps causality: an op whose producer is not yet
    scheduled cannot start before that producer, which starts no earlier than the chosen op.
    """

    def __init__(self, stages: Sequence[StageCost], orders: list[list[_Op]], zero_bubble: bool):
        self.stages = stages
        self.orders = orders
        self.zero_bubble = zero_bubble
        self.devices = len(orders)
        self.finish: dict[_Op, float] = {}

    def duration(self, op: _Op) -> float:
        kind, k, _ = op
        cost = self.stages[k]
        if kind == "F":
            return cost.forward
        if not self.zero_bubble:
            return cost.backward
        return cost.weight_grad if kind == "W" else cost.backward - cost.weight_grad

    def ready(self, op: _Op) -> float | None:
        """When the op's inputs have arrived; None while a producer is unscheduled."""
        kind, k, i = op
        finish = self.finish
        if kind == "F":
            if k == 0:
                return 0.0
            done = finish.get(("F", k - 1, i))
            return None if done is None else max(0.0, done + self.stages[k - 1].send)
        done = finish.get(("F", k, i) if kind == "B" else ("B", k, i))
        if done is None:
            return None
        ready = max(0.0, done)
        if kind == "B" and k < len(self.stages) - 1:
            after = finish.get(("B", k + 1, i))
            if after is None:
                return None
            ready = max(ready, after + self.stages[k].send)
        return ready

    def next_op(
        self, d: int, free: float, pos: int, pending_w: list[_Op], in_flight: int
    ) -> tuple[float, _Op | None]:
        """The op device ``d`` starts next and when (inf while it waits on an unscheduled op)."""
        order = self.orders[d]
        nxt = order[pos] if pos < len(order) else None
        ready = None if nxt is None else self.ready(nxt)
        if pending_w:
            # ZB-H1 keeps at most p micro-batches in flight on every device, as 1F1B does on
            # its first: a forward that would exceed that first retires the oldest W.
            if nxt is None or (nxt[0] == "F" and in_flight >= self.devices):
                return free, pending_w[0]
            # Otherwise W fills idle time, where it does not delay the next F or B.
            # (A relative tolerance keeps a W that exactly fits a gap from losing to rounding.)
            w = self.duration(pending_w[0])
            gap = math.inf if ready is None else ready - free
            if gap >= w - 1e-9 * (free + w):
                return free, pending_w[0]
        if nxt is None or ready is None:
            return math.inf, None
        return max(free, ready), nxt

    def run(self) -> tuple[float, list[float]]:
        """Schedule every op; return the step time and each device's busy (compute) time."""
        n = self.devices
        free = [0.0] * n
        busy = [0.0] * n
        pos = [0] * n
        in_flight = [0] * n  # forwards done minus weight gradients done (zero_bubble)
        pending_w: list[list[_Op]] = [[] for _ in range(n)]
        left = sum(map(len, self.orders))
        if self.zero_bubble:
            left += sum(op[0] == "B" for order in self.orders for op in order)

        def plan(dev: int) -> tuple[float, _Op | None]:
            return self.next_op(dev, free[dev], pos[dev], pending_w[dev], in_flight[dev])

        plans = [plan(dev) for dev in range(n)]
        # Devices by the start of their next op (earliest, then lowest index); an entry whose
        # start no longer matches its device's plan is stale and skipped.
        queue = [(p[0], dev) for dev, p in enumerate(plans)]
        heapq.heapify(queue)
        while left:
            key, d = heapq.heappop(queue)
            if key != plans[d][0]:
                continue
            start, op = plans[d]
            if op is None:  # cannot happen for the orders built here; guards against a hang
                raise RuntimeError("pipeline schedule deadlocked: no device can start an op")
            end = start + self.duration(op)
            self.finish[op] = end
            free[d] = end
            busy[d] += end - start
            left -= 1
            if op[0] == "W":
                pending_w[d].pop(0)
                in_flight[d] -= 1
            else:
                pos[d] += 1
                if self.zero_bubble and op[0] == "F":
                    in_flight[d] += 1
                if self.zero_bubble and op[0] == "B":
                    pending_w[d].append(("W", op[1], op[2]))
            # Only this device and the one that consumes its output can change plans: a
            # forward feeds the next chunk's device, a backward the previous one's, a weight
            # gradient nothing (the plans of the others read nothing that changed).
            for dev in _consumers(op[0], d, n):
                plans[dev] = plan(dev)
                heapq.heappush(queue, (plans[dev][0], dev))
        return max(free), busy


def _run_zero_bubble(stages: Sequence[StageCost], m: int) -> tuple[float, list[float]]:
    """``_Simulation.run`` for zero-bubble (one stage per device, 1F1B orders, weight
    gradients filling gaps), equal to it to the bit: the same choices from the same float
    operations in the same order, the same queue of (start, device) entries; finish times
    live in per-stage lists instead of a dictionary of operations, and each device's next
    choice is worked out inline. Only the step time and busy times: ``timeline`` keeps the
    general simulation."""
    n = len(stages)
    last = n - 1
    forward = [s.forward for s in stages]
    input_grad = [s.backward - s.weight_grad for s in stages]
    weight_grad = [s.weight_grad for s in stages]
    send = [s.send for s in stages]
    # Each device's order as (is forward, stage, micro-batch); device d's ops are on stage d.
    orders = _fixed_orders("1f1b", n, m, 1)
    fwd_end: list[list[float | None]] = [[None] * m for _ in range(n)]
    bwd_end: list[list[float | None]] = [[None] * m for _ in range(n)]
    free = [0.0] * n
    busy = [0.0] * n
    pos = [0] * n
    in_flight = [0] * n
    pending: list[collections.deque[int]] = [collections.deque() for _ in range(n)]
    # (micro-batches whose weight gradient waits, oldest first)
    left = sum(map(len, orders)) + n * m

    def plan(d: int) -> tuple[float, int, int]:
        """(start, kind, micro-batch) of device d's next op: kind 0 F, 1 B, 2 W, -1 none."""
        order = orders[d]
        at = free[d]
        ready: float | None = None
        nxt = order[pos[d]] if pos[d] < len(order) else None
        if nxt is not None:
            is_forward, _, i = nxt
            if is_forward:
                if d == 0:
                    ready = 0.0
                else:
                    done = fwd_end[d - 1][i]
                    ready = None if done is None else max(0.0, done + send[d - 1])
            else:
                done = fwd_end[d][i]
                if done is not None:
                    ready = max(0.0, done)
                    if d < last:
                        after = bwd_end[d + 1][i]
                        ready = None if after is None else max(ready, after + send[d])
        waiting = pending[d]
        if waiting:
            if nxt is None or (nxt[0] and in_flight[d] >= n):
                return at, 2, waiting[0]
            w = weight_grad[d]
            gap = math.inf if ready is None else ready - at
            if gap >= w - 1e-9 * (at + w):
                return at, 2, waiting[0]
        if nxt is None or ready is None:
            return math.inf, -1, 0
        return max(at, ready), (0 if nxt[0] else 1), nxt[2]

    plans = [plan(d) for d in range(n)]
    queue = [(p[0], d) for d, p in enumerate(plans)]
    heapq.heapify(queue)
    while left:
        key, d = heapq.heappop(queue)
        if key != plans[d][0]:
            continue
        start, kind, i = plans[d]
        if kind < 0:  # cannot happen for 1F1B orders; guards against a hang
            raise RuntimeError("pipeline schedule deadlocked: no device can start an op")
        if kind == 0:
            end = start + forward[d]
            fwd_end[d][i] = end
            pos[d] += 1
            in_flight[d] += 1
            replan: tuple[int, ...] = (d, (d + 1) % n)
        elif kind == 1:
            end = start + input_grad[d]
            bwd_end[d][i] = end
            pos[d] += 1
            pending[d].append(i)
            replan = (d, (d - 1) % n)
        else:
            end = start + weight_grad[d]
            pending[d].popleft()
            in_flight[d] -= 1
            replan = (d,)
        free[d] = end
        busy[d] += end - start
        left -= 1
        for dev in replan:
            plans[dev] = plan(dev)
            heapq.heappush(queue, (plans[dev][0], dev))
    return max(free), busy


def _consumers(kind: str, d: int, n: int) -> tuple[int, ...]:
    """Devices whose next operation may read what device ``d`` just finished (``kind``), in
    the order the simulation has always re-planned them (itself, then the neighbour)."""
    if kind == "F":
        return (d, (d + 1) % n)
    if kind == "B":
        return (d, (d - 1) % n)
    return (d,)


def _peak_activations(order: list[_Op]) -> int:
    """Most forwards whose backward (input gradient) has not yet run, along a device's order."""
    held = peak = 0
    for kind, _, _ in order:
        held += 1 if kind == "F" else -1
        peak = max(peak, held)
    return peak


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def simulate(
    stages: Sequence[StageCost], micro_batches: int, schedule: Schedule, virtual_stages: int = 1
) -> PipelineResult:
    """Simulate one optimizer step of ``micro_batches`` through ``stages`` under ``schedule``.

    ``stages`` are the pipeline stages in order (for ``interleaved``, the ``p * virtual_stages``
    chunks in model order: chunk ``k`` runs on device ``k % p``). Raises PipelineError for an
    empty pipeline, fewer than one micro-batch, an unknown schedule, a virtual-stage count that
    does not fit, or (interleaved, as Megatron) ``micro_batches`` not a multiple of p.
    """
    if not stages:
        raise PipelineError("simulate needs at least one stage; got an empty list")
    if not _is_count(micro_batches) or micro_batches < 1:
        raise PipelineError(f"micro_batches={micro_batches!r} must be an integer >= 1")
    if schedule not in SCHEDULES:
        raise PipelineError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    v = virtual_stages
    if not _is_count(v) or v < 1:
        raise PipelineError(f"virtual_stages={v!r} must be an integer >= 1")
    if schedule != "interleaved" and v != 1:
        raise PipelineError(
            f"virtual_stages={v} needs schedule 'interleaved'; {schedule!r} runs one chunk per "
            "device (pass virtual_stages=1)"
        )
    if schedule == "interleaved" and len(stages) % v:
        raise PipelineError(
            f"interleaved needs len(stages) = devices * virtual_stages: {len(stages)} "
            f"stages is not a multiple of virtual_stages={v}"
        )
    p = len(stages) // v
    if schedule == "zero_bubble":
        step_time, busy = _run_zero_bubble(stages, micro_batches)
    else:
        step_time, busy = _run_fixed(stages, _fixed_sequence(schedule, p, micro_batches, v))
    return PipelineResult(
        step_time=step_time,
        bubble_time=step_time - max(busy),
        in_flight=list(peak_in_flight(schedule, p, micro_batches, v)),
    )


@functools.lru_cache(maxsize=256)
def _fixed_orders(schedule: str, p: int, m: int, v: int
                  ) -> tuple[tuple[tuple[bool, int, int], ...], ...]:
    """``_orders`` as (is forward, chunk, micro-batch) tuples, cached (never mutated)."""
    return tuple(tuple((kind == "F", k, i) for kind, k, i in order)
                 for order in _orders(schedule, p, m, v))


@dataclass(frozen=True)
class _Sequence:
    """``_fixed_sequence``'s result: the device count and the ops' columns."""

    devices: int
    columns: tuple[array.array, ...]


@functools.lru_cache(maxsize=256)
def _fixed_sequence(schedule: str, p: int, m: int, v: int) -> _Sequence:
    """Every op of a fixed-order schedule in an order that respects all its dependencies, as
    columns (device, is forward, chunk, first input, second input): the inputs are positions
    in this sequence, -1 where there is none (a forward's output of the chunk before; a
    backward's own forward, then the backward of the chunk after). Which op can run next
    depends only on which have run, never on their times, so the order is worked out once
    per (schedule, p, m, v): each device runs its own order as far as its inputs allow,
    devices in turn. Compact columns: pp 64 x 256 micro-batches is 65 000 ops."""
    orders = _fixed_orders(schedule, p, m, v)
    last = p * v - 1
    # Position in the sequence of each (chunk, micro-batch)'s forward and backward, -1 before
    # it is placed; plain lists of ints (no tuples made per op: nothing for the collector).
    fwd_at = [-1] * (p * v * m)
    bwd_at = [-1] * (p * v * m)
    columns: tuple[list[int], ...] = ([], [], [], [], [])
    devices, kinds, chunks, firsts, seconds = columns
    pos = [0] * p
    left = sum(map(len, orders))
    while left:
        progressed = False
        for d in range(p):
            order = orders[d]
            j = pos[d]
            while j < len(order):
                is_forward, k, i = order[j]
                if is_forward:
                    first = fwd_at[(k - 1) * m + i] if k > 0 else -1
                    if k > 0 and first < 0:
                        break
                    second = -1
                    fwd_at[k * m + i] = len(devices)
                else:
                    first = fwd_at[k * m + i]
                    second = bwd_at[(k + 1) * m + i] if k < last else -1
                    if first < 0 or (k < last and second < 0):
                        break
                    bwd_at[k * m + i] = len(devices)
                devices.append(d)
                kinds.append(is_forward)
                chunks.append(k)
                firsts.append(first)
                seconds.append(second)
                j += 1
            if j != pos[d]:
                left -= j - pos[d]
                pos[d] = j
                progressed = True
        if not progressed:  # cannot happen for the orders built here; guards against a hang
            raise RuntimeError("pipeline schedule deadlocked: no device can start an op")
    return _Sequence(p, tuple(array.array("i", column) for column in columns))


def _run_fixed(stages: Sequence[StageCost], sequence: _Sequence) -> tuple[float, list[float]]:
    """``_Simulation.run`` for schedules without weight-gradient ops (every device's order
    fixed), over ``_fixed_sequence``: each op ends at ``max(device free, inputs arrived) +
    duration``, with the very same float operations as the simulation (the same ``max`` of
    the same sums, ``busy`` summed in each device's order), so the figures are equal to the
    bit; it only skips the event queue."""
    n = sequence.devices
    forward = [s.forward for s in stages]
    backward = [s.backward for s in stages]
    send = [s.send for s in stages]
    end = [0.0] * len(sequence.columns[0])
    free = [0.0] * n
    busy = [0.0] * n
    for at, (d, is_forward, k, first, second) in enumerate(zip(*sequence.columns,
                                                               strict=True)):
        if is_forward:
            ready = 0.0
            if first >= 0:
                ready = max(ready, end[first] + send[k - 1])
            start = max(free[d], ready)
            finish = start + forward[k]
        else:
            ready = max(0.0, end[first] + 0.0)
            if second >= 0:
                ready = max(ready, end[second] + send[k])
            start = max(free[d], ready)
            finish = start + backward[k]
        end[at] = finish
        free[d] = finish
        busy[d] += finish - start
    return max(free), busy


@functools.lru_cache(maxsize=4096)
def peak_in_flight(schedule: Schedule, devices: int, micro_batches: int,
                   virtual_stages: int = 1) -> tuple[int, ...]:
    """Micro-batches (for ``interleaved``: micro-batch chunks) each device holds at its peak.

    The schedule's order alone decides it, whatever the stages cost: what ``simulate``
    reports as ``in_flight``, without simulating. Closed forms of ``_peak_activations`` over
    the orders ``_orders`` builds (warm-up forwards, then forward/backward pairs, each pair
    holding one more micro-batch for a moment), O(devices) whatever the micro-batch count.
    """
    p, m, v = devices, micro_batches, virtual_stages
    if schedule == "interleaved" and v > 1:
        if m % p:
            raise PipelineError(
                f"interleaved needs micro_batches to be a multiple of the {p} pipeline devices "
                f"(as Megatron requires); got micro_batches={m}"
            )
        total = m * v
        return tuple(total if m == p else min(2 * (p - d - 1) + (v - 1) * p + 1, total)
                     for d in range(p))
    if schedule == "gpipe" and p > 1:
        return (m,) * p
    return tuple(min(p - d, m) for d in range(p))


def _orders(schedule: str, p: int, m: int, v: int) -> list[list[_Op]]:
    """Each device's operation order under ``schedule`` (validated by ``simulate``)."""
    if schedule == "interleaved" and v > 1:
        if m % p:
            raise PipelineError(
                f"interleaved needs micro_batches to be a multiple of the {p} pipeline devices "
                f"(as Megatron requires); got micro_batches={m}"
            )
        return [_interleaved_order(d, p, v, m) for d in range(p)]
    # Megatron runs the plain 1F1B schedule without virtual stages. One device is no pipeline:
    # every schedule is gradient accumulation, one micro-batch held at a time (1F1B's order),
    # which is what the executor runs at pp = 1.
    build = _gpipe_order if schedule == "gpipe" and p > 1 else _one_f_one_b_order
    return [build(d, p, m) for d in range(p)]


@dataclass(frozen=True)
class TimedOp:
    """One operation of a simulated schedule: when it ran on which device."""

    kind: str  # "F" forward, "B" backward (for zero_bubble: input gradient), "W" weight gradient
    device: int  # pipeline device (stage) that ran it
    chunk: int  # virtual stage in model order (== device without interleaving)
    micro_batch: int
    start: float
    end: float
    send: float  # seconds its output then travels to the next (F) or previous (B) stage


def timeline(
    stages: Sequence[StageCost], micro_batches: int, schedule: Schedule, virtual_stages: int = 1
) -> list[TimedOp]:
    """Every operation of the schedule ``simulate`` runs, with its start and end, sorted by
    device then start time: what a pipeline timeline draws. The latest end is exactly
    ``simulate(...).step_time`` (the same simulation; ``simulate`` itself is unchanged)."""
    simulate(stages, micro_batches, schedule, virtual_stages)  # validates the inputs
    p = len(stages) // virtual_stages
    orders = _orders(schedule, p, micro_batches, virtual_stages)
    sim = _Simulation(stages, orders, schedule == "zero_bubble")
    sim.run()
    ops = []
    last = len(stages) - 1
    for op, end in sim.finish.items():
        kind, k, i = op
        if kind == "F":
            send = stages[k].send if k < last else 0.0
        elif kind == "B":
            send = stages[k - 1].send if k > 0 else 0.0
        else:
            send = 0.0
        ops.append(TimedOp(kind, k % p, k, i, end - sim.duration(op), end, send))
    return sorted(ops, key=lambda o: (o.device, o.start, o.end))
