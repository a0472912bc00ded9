"""Critical paths of a pipeline schedule, as lower bounds linear in the chunks' costs.

``simulate`` runs every device's operations in a fixed order; each starts when its device is
free and its inputs have arrived. For a fixed order (GPipe, 1F1B, interleaved) the step time
is therefore the longest path through the graph whose edges are the device orders and the
data dependencies (forward ``k-1 -> k`` and backward ``k+1 -> k`` with the send between, and a
chunk's forward before its backward). That graph depends only on the schedule, the device and
micro-batch counts and the virtual stages, never on the costs, so the length of any one of its
paths, a sum of so many forwards, backwards and sends of each chunk, is a lower bound on the
step time of every split. Zero-bubble's weight gradients fill gaps where they fit: leaving
them out (and taking its backward as the input gradient only) only shortens paths, so the same
holds for the graph of its forwards and input-gradient backwards.

``critical_path`` finds the longest path for given (integer) costs and returns it as counts per
chunk, which the stage model adds as a constraint (a cut).
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.cost_models.pipeline import _fixed_sequence


@dataclass(frozen=True)
class Path:
    """How many forwards, backwards and sends (each way) of each chunk a path runs through."""

    forwards: tuple[int, ...]
    backwards: tuple[int, ...]
    sends: tuple[int, ...]


def critical_path(schedule: str, p: int, m: int, v: int, forward: list[int],
                  backward: list[int], send: list[int]) -> tuple[int, Path]:
    """Length and counts of the longest path of the schedule's graph, with ``forward[k]``,
    ``backward[k]`` (zero-bubble: its input-gradient part) and ``send[k]`` (after chunk ``k``)
    the costs of chunk ``k`` in model order. One pass over the schedule's ops in dependency
    order (``_fixed_sequence``, zero-bubble's being 1F1B's), each op's longest way in kept:
    the device's previous op, else the first of its inputs that arrives later."""
    sequence = _fixed_sequence(schedule, p, m, v)
    devices, kinds, chunks, firsts, seconds = sequence.columns
    ops = len(devices)
    end = [0] * ops
    came = [-1] * ops  # the op before on the path, -1 for none
    crossed = [-1] * ops  # the chunk whose send that step crosses, -1 for none
    last_on = [-1] * p
    for at in range(ops):
        d, k, first, second = devices[at], chunks[at], firsts[at], seconds[at]
        prev = last_on[d]
        best, via, lag = (end[prev] if prev >= 0 else 0), prev, -1
        if kinds[at]:
            if first >= 0 and end[first] + send[k - 1] > best:
                best, via, lag = end[first] + send[k - 1], first, k - 1
            end[at] = best + forward[k]
        else:
            if end[first] > best:
                best, via, lag = end[first], first, -1
            if second >= 0 and end[second] + send[k] > best:
                best, via, lag = end[second] + send[k], second, k
            end[at] = best + backward[k]
        came[at], crossed[at], last_on[d] = via, lag, at
    tail = max(range(ops), key=end.__getitem__)
    counts = {True: [0] * len(forward), False: [0] * len(forward)}
    sends = [0] * len(forward)
    node = tail
    while node >= 0:
        counts[bool(kinds[node])][chunks[node]] += 1
        if crossed[node] >= 0:
            sends[crossed[node]] += 1
        node = came[node]
    return end[tail], Path(tuple(counts[True]), tuple(counts[False]), tuple(sends))


def interleaved_paths(p: int, v: int, m: int, forward: list[int], backward: list[int],
                      send: list[int]) -> int:
    """The longest of the interleaved schedule's paths ``L(d, r, c)`` (``bubble.py``), which
    the stage model adds as constraints from the start (``m`` a multiple of ``p``): for each
    device d, ``m Y_d`` plus the longest forward part ``FP(d, r)`` plus the longest backward
    part ``BP(d, c)``, with ``FP(d, r) = sum_{k < rp+d} (F_k + s_k) - p sum_{q < r} F_{qp+d}``
    and ``BP`` alike. A lower bound on the step time for these costs."""
    k_chunks = p * v
    best = 0
    for d in range(p):
        work = sum(forward[k] + backward[k] for k in range(d, k_chunks, p))
        ends = []
        for xs in (forward, backward):
            ends.append(max(sum(xs[k] + send[k] for k in range(r * p + d))
                            - p * sum(xs[q * p + d] for q in range(r)) for r in range(v)))
        best = max(best, m * work + ends[0] + ends[1])
    return best
