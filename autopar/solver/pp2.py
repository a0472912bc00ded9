"""Exact split of a two-device interleaved shape: weighted paths (column generation), then
branch and bound over chunk sizes.

With ``pp = 2`` and interleaving, the CP-SAT stage model proves slowly: many splits differ
only in which middle chunks get one layer more, their bounds are nearly equal, and the model
excludes them one no-good cut at a time. Here the split (chunk sizes in model order; the layers
are a fixed sequence, so the sizes fix every chunk's costs) is searched directly.

What a split is worth, ``value(split)``, with every layer without recomputation (``none``):

- the pipeline: the longest path of the schedule's graph on the chunks' costs, which is
  ``simulate``'s step time (the same fixed orders, ``_run_fixed``);
- for ZeRO-3 with data parallelism, at least each device's sync (``max(pipeline, sync_d)``:
  ZeRO-3 overlaps the sync with all of d's ``m`` micro-batches, which the pipeline runs);
- the optimizer update of the device holding the most parameters.

``value`` never exceeds ``estimate`` of that split under any recomputation: recomputing only
adds to chunks' costs (every path of the graph grows), ZeRO-3's exposed sync is at least
``sync_d`` minus d's work, which the pipeline already covers, other exposed sync is at least 0,
and the optimizer does not depend on it. So ``min value`` over all splits bounds the shape
whatever the recomputation and memory. When the split that attains it fits without
recomputation and exposes no sync, ``estimate`` of it equals ``value``: it is the shape's
optimum. Otherwise the search falls back to the stage model, starting from this bound.

Bounds. The graph does not depend on the costs (``paths.py``), so any convex combination of
its paths, as counts ``alpha_k, beta_k, gamma_k`` of chunk k's forwards, backwards and sends,
is at most the pipeline of every split; its least over all splits is a shortest path over
(chunk, first layer) (a dynamic program, ``_table_of``), and with the optimizer's least share
(half the parameters) a lower bound on every ``value``. The weights come from a small LP
over the critical paths of the splits found so far (``path_weights``): the split the program
picks under them is costed exactly and its critical path (``critical_path``) joins, until
the program picks a split already seen. The program's table then bounds every completion of a
partial split exactly (for those weights); with the paths of ``_lines`` (whole layers), a
depth-first branch and bound over chunk sizes, first chunk first, closes what is left: every
leaf is costed exactly.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass

import numpy as np
from autopar.cost_models.pipeline import _fixed_sequence, _run_fixed
from ortools.linear_solver import pywraplp

from autopar.solver.paths import critical_path
from autopar.solver.space import even_splits
from autopar.solver.stage_model import Candidate
from autopar.solver.tables import ShapeTables

ROUNDING = 1e-9
"""Relative margin on the bounds handed back (the search's own)."""

SLACK = 1e-12
"""Relative margin of the pruning test: a bound sums the same figures as a value in another
order."""

COLUMN_STEPS = 40
"""Most column-generation steps before the branch and bound."""

SUBSET_SUMS = 1 << 14
"""Most distinct sums of unplaced layers kept per position."""

SLICE_NODES = 2000
"""Most nodes one ``solve`` visits before it hands back (the shape then goes back on the
search's heap at the least bound left): a count, not seconds, so that a search without a time
limit visits the same nodes on every run."""

LP_GRID = 1e-9
"""Resolution, relative to their range, of the path lengths the weights' LP is given."""

CHECK_EVERY = 64
"""Nodes between two looks at the clock."""


def path_weights(lengths: np.ndarray) -> np.ndarray:
    """Weights on the columns (paths) that make the least row (split) of ``lengths @ w``
    largest: a small LP; any weights give a valid bound, and they are clipped and
    renormalised.

    The lengths go to the LP less their least and on a grid of ``LP_GRID`` of their range:
    the weights sum to one, so the shift does not change them, and the grid is far below
    what the bound can tell. Critical paths of near-alike splits have lengths equal to
    ~1e-8, and GLOP given them raw can fail (``ABNORMAL``, and a line on stderr for every
    value read; seen on Mistral-7B over V100 nodes). Should it still fail, the uniform
    weights serve."""
    low, span = lengths.min(), lengths.max() - lengths.min()
    if span > 0:
        lengths = np.round((lengths - low) / (span * LP_GRID)) * (span * LP_GRID)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    weights = [solver.NumVar(0.0, 1.0, f"w{i}") for i in range(lengths.shape[1])]
    z = solver.NumVar(-solver.infinity(), solver.infinity(), "z")
    solver.Add(sum(weights) == 1)
    for row in lengths:
        solver.Add(z <= sum(w * float(x) for w, x in zip(weights, row, strict=True)))
    solver.Maximize(z)
    uniform = np.full(len(weights), 1 / len(weights))
    if solver.Solve() not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return uniform
    out = np.array([max(0.0, w.solution_value()) for w in weights])
    total = out.sum()
    return out / total if total > 0 else uniform


@dataclass(frozen=True)
class _Chunk:
    forward: float
    backward: float
    send: float


def applies(t: ShapeTables) -> bool:
    """Whether the exact split search can serve the shape: two devices of one node group,
    interleaved, layers without recomputation allowed."""
    s = t.shape
    return (s.pp == 2 and s.schedule == "interleaved" and s.virtual_stages > 1
            and t.micro_batches % s.pp == 0 and len(t.distinct_groups) == 1
            and "none" in t.modes and len(t.layer_class) >= t.chunks)


class SplitSearch:
    """Exact split of one shape (module docstring), with ``StageModel``'s ``solve`` /
    ``last_bound`` interface; resumable across calls."""

    def __init__(self, t: ShapeTables) -> None:
        assert applies(t)
        self.t = t
        self.inexact = False
        """Set by the search when ``estimate`` of the best split is above its value (it needs
        recomputation to fit, or exposes sync): the stage model then takes over."""
        s = t.shape
        group = t.groups[0]
        figures = t.figures(group)
        classes = t.layer_class
        n = self.n = len(classes)
        self.p = s.pp
        self.k = t.chunks
        self.m = t.micro_batches
        self.v = s.virtual_stages
        zero3 = s.zero_stage >= 3 and s.dp * s.cp > 1
        self.fp = [0.0] * (n + 1)
        self.bp = [0.0] * (n + 1)
        self.pp_ = [0.0] * (n + 1)
        self.sp = [0.0] * (n + 1)
        for i, c in enumerate(classes):
            f = figures[c]
            self.fp[i + 1] = self.fp[i] + f.forward("none")
            self.bp[i + 1] = self.bp[i] + f.backward("none")
            self.pp_[i + 1] = self.pp_[i] + f.params
            self.sp[i + 1] = self.sp[i] + (f.dp_sync if zero3 else 0.0)
        self.send = list(t.sends(group))
        self.rate = t.optimizer_rate(group)
        self.sequence = _fixed_sequence(s.schedule, self.p, self.m, self.v)
        self.least_optimizer = self.pp_[n] / self.p * self.rate
        # From each position on: the sums of work device 0 could take (so many layers of
        # each class; empty where too many: the work is then taken as divisible), the least
        # send after a layer that can end a chunk, the least and most backward share.
        work = [self.fp[i + 1] - self.fp[i] + self.bp[i + 1] - self.bp[i] for i in range(n)]
        unit = {c: work[i] for i, c in enumerate(classes)}
        counts = dict.fromkeys(unit, 0)
        self.sums: list[list[float]] = [[] for _ in range(n + 1)]
        self.sums[n] = [0.0]
        self.least_send = [0.0] * (n + 1)
        self.share = [(1.0, 0.0)] * (n + 1)
        least, exact = math.inf, True
        for i in range(n - 1, -1, -1):
            counts[classes[i]] += 1
            exact = exact and math.prod(x + 1 for x in counts.values()) <= SUBSET_SUMS
            if exact:
                totals = {0.0}
                for c, count in counts.items():
                    totals = {x + j * unit[c] for x in totals for j in range(count + 1)}
                self.sums[i] = sorted(totals)
            if i < n - 1:
                least = min(least, self.send[i])
            self.least_send[i] = 0.0 if least == math.inf else least
            rho = (self.bp[i + 1] - self.bp[i]) / work[i] if work[i] > 0 else 0.0
            lo, hi = self.share[i + 1]
            self.share[i] = (min(lo, rho), max(hi, rho))
        self.last_work = work[n - 1]
        self.unit = unit
        self.class_prefix = {c: [0] * (n + 1) for c in unit}
        for c, row in self.class_prefix.items():
            for i in range(n):
                row[i + 1] = row[i] + (classes[i] == c)
        self.least_layer = [min(work[i:n - 1], default=0.0) for i in range(n + 1)]
        self.best: tuple[float, tuple[int, ...]] | None = None
        self.lower = 0.0
        """Largest weighted-paths bound: no split's value is below it."""
        self.last_bound = 0.0
        self.stalled = False
        """Never: each call resumes where the last stopped (``StageModel.stalled``)."""
        self.steps = 0
        self.nodes = 0
        self.leaves = 0
        self._paths: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._path_keys: set[tuple] = set()
        self._splits: set[tuple[int, ...]] = set()
        self._row_splits: list[tuple[int, ...]] = []
        self._rows: list[list[float]] = []
        self._best_flow: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._table: np.ndarray | None = None
        self._stack: list[tuple] | None = None
        self._done = False
        self._handed: tuple[float, tuple[int, ...]] | None = None

    # -- splits ----------------------------------------------------------------------------

    def _chunks(self, split: tuple[int, ...]) -> list[_Chunk]:
        out = []
        pos = 0
        for k, size in enumerate(split):
            end = pos + size
            out.append(_Chunk(self.fp[end] - self.fp[pos], self.bp[end] - self.bp[pos],
                              self.send[end - 1] if k < self.k - 1 else 0.0))
            pos = end
        return out

    def _value(self, split: tuple[int, ...]) -> float:
        """``value`` of a split (module docstring)."""
        pipe, _ = _run_fixed(self._chunks(split), self.sequence)
        par = [0.0] * self.p
        sync = [0.0] * self.p
        pos = 0
        for k, size in enumerate(split):
            end = pos + size
            par[k % self.p] += self.pp_[end] - self.pp_[pos]
            sync[k % self.p] += self.sp[end] - self.sp[pos]
            pos = end
        return max(pipe, *sync) + max(par) * self.rate

    def _consider(self, split: tuple[int, ...], limit: float) -> float:
        value = self._value(split)
        self.leaves += 1
        if value < limit and (self.best is None or (value, split) < self.best):
            self.best = (value, split)
        return value

    def _path(self, split: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The split's critical path as counts per chunk."""
        chunks = self._chunks(split)
        # (Typed for integer costs; the same longest path for floats.)
        forward: list = [c.forward for c in chunks]
        backward: list = [c.backward for c in chunks]
        send: list = [c.send for c in chunks]
        _, path = critical_path(self.t.shape.schedule, self.p, self.m, self.v, forward,
                                backward, send)
        return (np.array(path.forwards, dtype=float), np.array(path.backwards, dtype=float),
                np.array(path.sends, dtype=float))

    # -- bounds ----------------------------------------------------------------------------

    def _table_of(self, flow: tuple[np.ndarray, np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, tuple[int, ...]]:
        """``V[k, a]``: least weighted cost of chunks ``k ..`` holding layers ``a ..`` (one
        layer at least each), and the split attaining ``V[0, 0]``."""
        n, k_chunks = self.n, self.k
        alpha, beta, gamma = flow
        fp, bp = np.array(self.fp), np.array(self.bp)
        send_after = np.array([0.0] + self.send)  # send_after[b]: chunk ending before b
        table = np.full((k_chunks + 1, n + 1), math.inf)
        table[k_chunks, n] = 0.0
        choice = np.zeros((k_chunks, n + 1), dtype=int)
        below = np.tri(n + 1, n + 1, 0, dtype=bool)  # b <= a: no layer
        for k in range(k_chunks - 1, -1, -1):
            cost = (alpha[k] * (fp[None, :] - fp[:, None]) + beta[k] * (bp[None, :]
                    - bp[:, None]))
            if k < k_chunks - 1:
                cost = cost + gamma[k] * send_after[None, :]
            total = np.where(below, math.inf, cost + table[k + 1][None, :])
            choice[k] = np.argmin(total, axis=1)
            table[k] = total[np.arange(n + 1), choice[k]]
        split = []
        pos = 0
        for k in range(k_chunks):
            end = int(choice[k, pos])
            split.append(end - pos)
            pos = end
        return table, tuple(split)

    def _lengths(self, path: tuple[np.ndarray, np.ndarray, np.ndarray],
                 split: tuple[int, ...]) -> float:
        return sum(float(a) * c.forward + float(b) * c.backward + float(g) * c.send
                   for a, b, g, c in zip(*path, self._chunks(split), strict=True))

    def _add(self, split: tuple[int, ...]) -> None:
        """A split for the LP, and its critical path."""
        if split in self._splits:
            return
        self._splits.add(split)
        path = self._path(split)
        key = tuple(tuple(x) for x in path)
        if key not in self._path_keys:
            self._path_keys.add(key)
            self._paths.append(path)
            for row, old in zip(self._rows, self._row_splits, strict=True):
                row.append(self._lengths(path, old))
        self._row_splits.append(split)
        self._rows.append([self._lengths(q, split) for q in self._paths])

    def _columns(self, limit: float, deadline: float | None) -> bool:
        """Improve the combination of paths (column generation: the LP over the paths and
        splits found so far picks weights, the dynamic program the split least under them,
        which is costed exactly and whose critical path joins); True once done (steps spent,
        or it proves the best split or that none is below ``limit``); False when it stops
        early: at ``deadline``, or to hand back the even split, first, if it is below
        ``limit``."""
        if not self._paths:
            even = even_splits(self.n, self.k)[0]
            self._consider(even, limit)
            self._add(even)
            if self.best is not None:
                return False  # hand the even split back before the columns: a plan at once
        while self.steps < COLUMN_STEPS:
            if deadline is not None and time.perf_counter() >= deadline:
                return False
            weights = path_weights(np.array(self._rows))
            alpha, beta, gamma = (sum(w * path[i] for w, path in zip(weights, self._paths,
                                                                       strict=True))
                                  for i in range(3))
            flow = (np.asarray(alpha), np.asarray(beta), np.asarray(gamma))
            table, split = self._table_of(flow)
            bound = float(table[0, 0]) + self.least_optimizer
            if bound > self.lower:
                self.lower, self._best_flow, self._table = bound, flow, table
            best = limit if self.best is None else min(limit, self.best[0])
            self._consider(split, best)
            best = limit if self.best is None else min(limit, self.best[0])
            self.steps += 1
            if self.lower * (1 - SLACK) >= best or split in self._splits:
                break
            self._add(split)
        return True

    def _lines(self, j: int, pos: int, state: tuple[float, ...]) -> float:
        """Least pipeline of any completion of chunks ``0 .. j-1`` (layers ``0 .. pos-1``)
        over the paths ``L(d, r, c)`` whose forward and backward parts lie in them, the
        paths through the last chunks: each is linear in ``w``, the
        unplaced work device 0 takes (so many whole layers of each class), and the least of
        their maximum (convex) over the sums ``w`` can take lies next to its least over all
        reals."""
        run_f, cf0, cf1, cb0, cb1, ef0, ef1, eb0, eb1, y0, y1 = state
        m, n, k_chunks = self.m, self.n, self.k
        rest = (self.fp[n] - self.fp[pos]) + (self.bp[n] - self.bp[pos])
        least = self.least_send[pos]
        prefix_sends = run_f - cf0 - cf1
        last_only = j == k_chunks - 1
        sends = prefix_sends + (k_chunks - 1 - j) * least
        ylast = rest if last_only else self.last_work
        rho_lo, rho_hi = self.share[pos]
        phi_lo, phi_hi = 1 - rho_hi, 1 - rho_lo
        lines: list[tuple[float, float]] = [
            (m * y0 + ef0 + eb0, float(m)),
            (m * (y1 + rest) + ef1 + eb1, float(-m)),
            # L(1, v-1, v-1) = (m-1) Y_1 + Y_0 + Y_last + 2 sends.
            ((m - 1) * (y1 + rest) + y0 + ylast + 2 * sends, float(2 - m)),
            # BP(1, v-1) = B_0 - (B_1 - B_last) + sends, FP(1, v-1) alike.
            (m * (y1 + rest) + ef1 + cb0 - cb1 - rho_hi * (rest - ylast) + sends,
             -m + rho_lo + rho_hi),
            (m * (y1 + rest) + eb1 + cf0 - cf1 - phi_hi * (rest - ylast) + sends,
             -m + phi_lo + phi_hi),
        ]
        middle = k_chunks - 1 - j  # unplaced chunks but the last
        if middle > 0:
            # L(0, v-1, v-1) + L(1, v-1, v-1) = m W + Y_{K-2} + 2 (2 sum_{i<K-2} s_i + s_{K-2})
            # (FP(0, v-1) + FP(1, v-1) = F_{K-2} + sends, BP alike): half of it.
            lines.append(((m * (y0 + y1 + rest) + self.least_layer[pos]) / 2
                          + 2 * (prefix_sends + (middle - 1) * least) + least, 0.0))
        if last_only:
            return max(c for c, _ in lines)
        tail = self._last_chunk_term(pos, middle, rest, y0, y1, ef0 + eb0, prefix_sends,
                                     sends, least)
        points = [0.0, rest]
        for ci, si in lines:
            for cj, sj in lines:
                if si > 0 > sj:
                    points.append((cj - ci) / (si - sj))
        best_x, best_g = 0.0, math.inf
        for x in points:
            x = min(max(x, 0.0), rest)
            g = max(c + s * x for c, s in lines)
            if g < best_g:
                best_x, best_g = x, g
        sums = self.sums[pos]
        if not sums:
            return max(best_g, tail)
        i = bisect.bisect_left(sums, best_x)
        return max(tail, min(max(c + s * w for c, s in lines)
                             for w in sums[max(0, i - 1):i + 1]))

    def _last_chunk_term(self, pos: int, middle: int, rest: float, y0: float, y1: float,
                         e0: float, prefix_sends: float, sends: float, least: float) -> float:
        """Least over the last chunk's size ``L`` of the larger of two bounds: some chunk k
        among the ``middle`` unplaced ones before the last holds at least
        ``ceil((layers - L) / middle)`` of the layers before the last chunk, and
        ``(L(0, r+1, r+1) + L(1, r, r)) / 2 = (m W + Y_k) / 2 + 2 sum_{i<k} s_i + s_k`` (k = 2r+1,
        and k = 2r alike, up to K-2); and device 0's path ``m Y_0 + FP(0, .) + BP(0, .)``
        against ``L(1, v-1, v-1) = (m-1) Y_1 + Y_0 + Y_last + 2 sends``, whose least maximum
        over device 0's share ``w`` of the unplaced work (real) is where they cross. The first
        falls and the second rises with L: the least is where they meet."""
        n, m = self.n, self.m
        unplaced = n - pos
        total = m * (y0 + y1 + rest)

        def spread(size: int) -> float:
            count = -(-(unplaced - size) // middle)
            return (total + self._least_work(pos, n - size, count)) / 2 \
                + 2 * prefix_sends + least

        def crossing(size: int) -> float:
            ylast = self.fp[n] - self.fp[n - size] + self.bp[n] - self.bp[n - size]
            free = rest - ylast
            c0, s0 = m * y0 + e0, float(m)
            c1, s1 = (m - 1) * (y1 + rest) + y0 + ylast + 2 * sends, float(2 - m)
            w = min(max((c1 - c0) / (s0 - s1), 0.0), max(free, 0.0))
            return max(c0 + s0 * w, c1 + s1 * w)

        lo, hi = 1, unplaced - middle
        while lo < hi:  # the least size where the rising bound reaches the falling one
            mid = (lo + hi) // 2
            if crossing(mid) >= spread(mid):
                hi = mid
            else:
                lo = mid + 1
        return min(max(spread(size), crossing(size)) for size in {lo, max(1, lo - 1)})

    def _least_work(self, lo: int, hi: int, count: int) -> float:
        """Least work of ``count`` of the layers ``lo .. hi-1``."""
        total = 0.0
        for unit, c in sorted((u, c) for c, u in self.unit.items()):
            take = min(count, self.class_prefix[c][hi] - self.class_prefix[c][lo])
            total += take * unit
            count -= take
            if count <= 0:
                break
        return total

    # -- branch and bound ------------------------------------------------------------------

    def _run(self, below: float | None, deadline: float | None) -> bool:
        """Advance the search; True once it is complete."""
        limit = math.inf if below is None else below
        found = self.best
        if not self._columns(limit, deadline):
            return False
        if self.best is not found:
            return False  # hand the better split back first: it tightens every other shape
        assert self._table is not None and self._best_flow is not None
        if self._stack is None:
            self._stack = [(self.lower, 0, 0, 0.0, (), (0.0,) * 11)]
        stack = self._stack
        k_chunks, n = self.k, self.n
        stop = self.nodes + SLICE_NODES
        while stack:
            self.nodes += 1
            if self.nodes >= stop or (deadline is not None and self.nodes % CHECK_EVERY == 0
                                      and time.perf_counter() >= deadline):
                return False
            best = limit if self.best is None else min(limit, self.best[0])
            cut = best * (1 + SLACK)
            bound, k, pos, done, split, state = stack.pop()
            if bound >= cut:
                continue
            if k == k_chunks:
                self._consider(split, best)
                if self.best is not found:
                    return False  # hand it back at once (the search goes on from here)
                continue
            children = []
            last = k == k_chunks - 1
            ends = range(n, n + 1) if last else range(pos + 1, n - (k_chunks - k - 1) + 1)
            for end in ends:
                child = self._child(k, pos, end, done, split, state, cut)
                if child is not None:
                    children.append(child)
            # Least bound popped first (then the smaller split: deterministic).
            children.sort(key=lambda c: (c[0], c[4]), reverse=True)
            stack.extend(children)
        return True

    def _child(self, k: int, pos: int, end: int, done: float, split: tuple[int, ...],
               state: tuple[float, ...], cut: float) -> tuple | None:
        """The node where chunk ``k`` holds layers ``pos .. end-1``, with its bound: the
        larger of the weighted paths' least completion (``_table_of``) and ``_lines``, plus
        the optimizer; None where it is not below ``cut``."""
        assert self._table is not None and self._best_flow is not None
        rest = float(self._table[k + 1, end])
        if rest == math.inf:
            return None
        alpha, beta, gamma = self._best_flow
        cost = float(alpha[k]) * (self.fp[end] - self.fp[pos]) + float(beta[k]) * (
            self.bp[end] - self.bp[pos])
        if k < self.k - 1:
            cost += float(gamma[k]) * self.send[end - 1]
        child = done + cost
        bound = child + rest + self.least_optimizer
        if bound >= cut:
            return None
        child_state = self._advance(k, pos, end, state)
        bound = max(bound, self._lines(k + 1, end, child_state)
                    + self._least_optimizer_of(k + 1, end, split, pos))
        if bound >= cut:
            return None
        return (bound, k + 1, end, child, split + (end - pos,), child_state)

    def bounds_along(self, split: tuple[int, ...]) -> list[float]:
        """The bound of every node on the way to ``split`` (after the combination of paths is
        chosen: ``solve`` first), for the tests."""
        out = []
        pos, done, state = 0, 0.0, (0.0,) * 11
        prefix: tuple[int, ...] = ()
        for k, size in enumerate(split):
            node = self._child(k, pos, pos + size, done, prefix, state, math.inf)
            assert node is not None
            out.append(node[0])
            _, _, pos, done, prefix, state = node
        return out

    def _advance(self, k: int, pos: int, end: int, state: tuple[float, ...]
                 ) -> tuple[float, ...]:
        """The prefix figures of ``_lines`` once chunk ``k`` holds layers ``pos .. end-1``."""
        run_f, cf0, cf1, cb0, cb1, ef0, ef1, eb0, eb1, y0, y1 = state
        f = self.fp[end] - self.fp[pos]
        b = self.bp[end] - self.bp[pos]
        snd = self.send[end - 1] if k < self.k - 1 else 0.0
        run_b = run_f - cf0 - cf1 + cb0 + cb1  # the same sends
        run_f, run_b = run_f + f + snd, run_b + b + snd
        if k % 2 == 0:
            cf0, cb0, y0 = cf0 + f, cb0 + b, y0 + f + b
        else:
            cf1, cb1, y1 = cf1 + f, cb1 + b, y1 + f + b
        if k + 1 < self.k:
            # Chunk k+1 is device d's round-r chunk: FP(d, r) and BP(d, r) are now fixed.
            if (k + 1) % 2 == 0:
                ef0, eb0 = max(ef0, run_f - 2 * cf0), max(eb0, run_b - 2 * cb0)
            else:
                ef1, eb1 = max(ef1, run_f - 2 * cf1), max(eb1, run_b - 2 * cb1)
        return (run_f, cf0, cf1, cb0, cb1, ef0, ef1, eb0, eb1, y0, y1)

    def _least_optimizer_of(self, j: int, pos: int, split: tuple[int, ...], start: int
                            ) -> float:
        """Least optimizer time of any completion of the first ``j`` chunks."""
        par = [0.0, 0.0]
        at = 0
        for k, size in enumerate(split + (pos - start,)):
            par[k % 2] += self.pp_[at + size] - self.pp_[at]
            at += size
        rest = self.pp_[self.n] - self.pp_[pos]
        if j == self.k - 1:
            return max(par[0], par[1] + rest) * self.rate
        return max(par[0], par[1], (par[0] + par[1] + rest) / 2) * self.rate

    def solve(self, below: float | None, time_limit_s: float | None
              ) -> tuple[Candidate | None, bool]:
        """A split below ``below`` (``StageModel.solve``'s contract): the best found so far,
        each at most once, as soon as it is found; returns (candidate, proven), ``proven``
        once the search is complete; ``last_bound`` is a lower bound on every split not yet
        handed back. One call visits at most ``SLICE_NODES`` nodes."""
        if not self._done:
            deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
            self._done = self._run(below, deadline)
        if self._done:
            bound = math.inf
        else:
            bound = min((node[0] for node in self._stack or []), default=self.lower)
        fresh = (self.best is not None and self.best != self._handed
                 and (below is None or self.best[0] < below))
        if self.best is not None:
            bound = min(bound, self.best[0])
        if below is not None:
            bound = min(bound, below)
        if bound < math.inf:
            self.last_bound = max(self.last_bound, bound * (1 - ROUNDING))
        if not fresh:
            return None, self._done
        assert self.best is not None
        self._handed = self.best
        value, split = self.best
        return Candidate(split, ("none",) * self.n, value), self._done
