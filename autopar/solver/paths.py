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

from autopar.cost_models.pipeline import _orders


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
    the costs of chunk ``k`` in model order."""
    orders = _orders(schedule, p, m, v)
    chunks = len(forward)
    last = chunks - 1
    end: dict[tuple[str, int, int], int] = {}
    # Predecessor on the path: (op, via a send of chunk) or None.
    came: dict[tuple[str, int, int], tuple[tuple[str, int, int] | None, int]] = {}
    pos = [0] * p
    left = sum(map(len, orders))
    while left:
        progressed = False
        for d in range(p):
            order = orders[d]
            while pos[d] < len(order):
                op = order[pos[d]]
                kind, k, i = op
                prev = order[pos[d] - 1] if pos[d] else None
                best, via, lag_chunk = (end[prev] if prev else 0), prev, -1
                if kind == "F":
                    if k > 0:
                        dep = ("F", k - 1, i)
                        if dep not in end:
                            break
                        t = end[dep] + send[k - 1]
                        if t > best:
                            best, via, lag_chunk = t, dep, k - 1
                else:
                    dep = ("F", k, i)
                    if dep not in end:
                        break
                    if end[dep] > best:
                        best, via, lag_chunk = end[dep], dep, -1
                    if k < last:
                        dep = ("B", k + 1, i)
                        if dep not in end:
                            break
                        t = end[dep] + send[k]
                        if t > best:
                            best, via, lag_chunk = t, dep, k
                end[op] = best + (forward[k] if kind == "F" else backward[k])
                came[op] = (via, lag_chunk)
                pos[d] += 1
                left -= 1
                progressed = True
        if not progressed:  # cannot happen for the schedules' orders
            raise RuntimeError("pipeline schedule deadlocked")
    tail = max(end, key=end.__getitem__)
    fwd, bwd, snd = [0] * chunks, [0] * chunks, [0] * chunks
    node: tuple[str, int, int] | None = tail
    while node is not None:
        kind, k, _ = node
        (fwd if kind == "F" else bwd)[k] += 1
        via, lag_chunk = came[node]
        if lag_chunk >= 0:
            snd[lag_chunk] += 1
        node = via
    return end[tail], Path(tuple(fwd), tuple(bwd), tuple(snd))


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
