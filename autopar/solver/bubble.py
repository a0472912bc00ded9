"""A lower bound on the interleaved schedule's step time over uneven chunks: weighted paths.

``simulate`` runs the interleaved schedule in fixed per-device orders, so its step time is
the longest path of a graph that does not depend on the costs (``paths.py``). With ``p``
devices, ``v`` chunks each, ``m`` micro-batches, chunk ``k = r p + d`` (round ``r``, device
``d``) costing ``F_k`` forward and ``B_k`` backward per micro-batch, and ``s`` the least send,
the path ``L(d, r, c)``

- runs micro-batch 0 forward through chunks ``0 .. rp+d-1`` (``rp+d`` sends) to device d's
  round-r chunk, which comes after the forwards of micro-batches ``0 .. p-1`` of d's rounds
  ``< r`` in d's order;
- follows d's order to the backward of the last micro-batch on its round-c chunk, after
  which only the backwards of the last ``p`` micro-batches on d's rounds ``< c`` remain;
- runs that micro-batch backward through chunks ``cp+d-1 .. 0`` (``cp+d`` sends).

So ``T >= m Y_d + FP(d, r) + BP(d, c)`` with ``Y_d`` device d's work per micro-batch,
``FP(d, r) = sum_{k < rp+d} F_k - p sum_{q < r} F_{qp+d} + (rp+d) s`` and ``BP`` alike with B.
For any weights ``lam_d`` (a distribution over devices) and distributions ``mu_d`` over r and
``nu_d`` over c, the step time is at least
``sum_d lam_d (m Y_d + sum_r mu_{d,r} FP(d, r) + sum_c nu_{d,c} BP(d, c))``, a linear form
``sum_k (alpha_k F_k + beta_k B_k) + sigma s`` with nonnegative coefficients (``m >= p``). Every
layer lies in some chunk, so whatever the split it is at least
``sum over layers of min_k (alpha_k f + beta_k b) + sigma s``: a bound for every split.

Any weights give a valid bound; a linear program (OR-Tools' GLOP) picks the ones that make
``min_k (alpha_k phi + beta_k (1 - phi))`` largest for chunks whose forward share is ``phi``,
once per ``(p, v, m)``; the certificate is then renormalised and its coefficients recomputed
exactly, so the LP's tolerances cannot make it invalid.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from ortools.linear_solver import linear_solver_pb2, pywraplp

SPLIT_ROUNDS = 12
"""Most rounds of ``fitted_to_splits`` (each one LP solve and one shortest path)."""

STALLED_ROUNDS = 3
"""Rounds without a better bound after which ``fitted_to_splits`` stops."""

FORWARD_SHARES = (0.25, 1 / 3)
"""Forward shares of a chunk's work the weights are tuned for (full recomputation to none,
with the backward twice the forward); the bound is valid whatever the shares are."""


Costs: TypeAlias = "list[list[list[tuple[float, float]]]] | np.ndarray"
"""``costs[c][k]``: the (forward, backward) of a layer of class ``c`` in chunk ``k`` under each
mode it may run in."""


@dataclass(frozen=True)
class Certificate:
    """``T >= sum_k (alpha[k] F_k + beta[k] B_k) + sends * s`` for every interleaved run."""

    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    sends: float

    @functools.cached_property
    def pairs(self) -> tuple[tuple[float, float], ...]:
        """The distinct (alpha, beta) pairs no other pair is below in both."""
        pairs = sorted(set(zip(self.alpha, self.beta, strict=True)))
        kept: list[tuple[float, float]] = []
        for a, b in pairs:  # by alpha, then beta: keep those with a smaller beta than all before
            if not kept or b < kept[-1][1]:
                kept.append((a, b))
        return tuple(kept)

    def contiguous(self, costs: Costs, layer_class: list[int]
                   ) -> tuple[float, bool, tuple[int, ...]]:
        """The least of ``sum_k alpha_k F_k + beta_k B_k`` over every split of the layers (of
        classes ``layer_class``, in model order) into the chunks in order, one layer at least
        each: what a split can be, so at least the least over every assignment of layers to
        chunks (each layer in its cheapest chunk, what ``certificate_for`` maximises), and far
        more where the chunks hold one or two layers each (every path then runs through so
        many whole layers).
        Also ``dominated`` and a split that attains it.

        A shortest path over (chunk, first layer): chunk k from layer a to b costs
        ``P_k[b] - P_k[a]`` (prefix sums of its layers' least weighted costs), so the least
        over b of ``P_k[b] + rest[b]`` is a suffix minimum."""
        per_chunk, dominated = self._per_chunk(costs)
        k_chunks, n = len(self.alpha), len(layer_class)
        layer_costs = per_chunk[layer_class, :].T  # chunk x layer
        prefix = np.concatenate((np.zeros((k_chunks, 1)), np.cumsum(layer_costs, axis=1)),
                                axis=1)
        rest = np.full(n + 1, math.inf)  # least cost of the chunks after k, by first layer
        rest[n] = 0.0
        ends = np.empty((k_chunks, n + 1))
        for k in range(k_chunks - 1, -1, -1):
            ends[k] = prefix[k] + rest
            ends[k, n - (k_chunks - 1 - k) + 1:] = math.inf  # a layer for each later chunk
            least_end = np.minimum.accumulate(ends[k, ::-1])[::-1]  # least over ends >= b
            rest = np.full(n + 1, math.inf)
            rest[:-1] = least_end[1:] - prefix[k][:-1]  # chunk k from a ends past a
        split, start = [], 0
        for k in range(k_chunks):
            end = start + 1 + int(np.argmin(ends[k, start + 1:]))
            split.append(end - start)
            start = end
        return float(rest[0]), dominated, tuple(split)

    def _per_chunk(self, costs: Costs) -> tuple[np.ndarray, bool]:
        """Per class, per chunk: one layer's least ``alpha_k f + beta_k b`` over its modes;
        and whether every class's fastest mode is at most every other both forward and
        backward in every chunk (then recomputation beyond it adds at least the least
        coefficient times its time)."""
        table = _table(costs)  # class x chunk x mode x (forward, backward)
        forward, backward = table[..., 0], table[..., 1]
        fastest = np.argmin(forward + backward, axis=2)[..., None]
        dominated = bool((forward >= np.take_along_axis(forward, fastest, axis=2)).all()
                         and (backward >= np.take_along_axis(backward, fastest, axis=2)).all())
        alpha = np.array(self.alpha)[None, :, None]
        beta = np.array(self.beta)[None, :, None]
        return (alpha * forward + beta * backward).min(axis=2), dominated


def _table(costs: Costs) -> np.ndarray:
    """``costs`` as an array (class, chunk, mode, 2); a class or chunk with fewer modes repeats
    its first (which changes no least)."""
    if isinstance(costs, np.ndarray):
        return costs
    modes = max(len(m) for per_chunk in costs for m in per_chunk)
    return np.array([[list(m) + [m[0]] * (modes - len(m)) for m in per_chunk]
                     for per_chunk in costs], dtype=float)


def evaluate(p: int, v: int, m: int, lam: list[float], mu: list[list[float]],
             nu: list[list[float]]) -> Certificate:
    """The coefficients of the weighted paths (weights renormalised, negatives dropped)."""
    lam = _normal([max(0.0, x) for x in lam])
    mu = [_normal([max(0.0, x) for x in row]) for row in mu]
    nu = [_normal([max(0.0, x) for x in row]) for row in nu]
    k_chunks = p * v
    alpha = [0.0] * k_chunks
    beta = [0.0] * k_chunks
    sends = 0.0
    for d in range(p):
        for q in range(v):
            k = q * p + d
            alpha[k] += m * lam[d]
            beta[k] += m * lam[d]
        for weights, coef in ((mu[d], alpha), (nu[d], beta)):
            for r, w in enumerate(weights):
                if not w:
                    continue
                end = r * p + d
                sends += lam[d] * w * end
                for k in range(end):
                    coef[k] += lam[d] * w
                for q in range(r):
                    coef[q * p + d] -= p * lam[d] * w
    return Certificate(tuple(alpha), tuple(beta), sends)


def _normal(xs: list[float]) -> list[float]:
    total = sum(xs)
    if total <= 0:
        return [1.0] + [0.0] * (len(xs) - 1)
    return [x / total for x in xs]


def _uniform(p: int, v: int, m: int) -> Certificate:
    """The plain weights (every device alike, every path through its first chunks)."""
    first = [[1.0] + [0.0] * (v - 1)] * p
    return evaluate(p, v, m, [1.0] * p, first, first)


def _program(p: int, v: int, m: int
             ) -> tuple[pywraplp.Solver, list, list, list, list, list, Any]:
    """The weights as LP variables (``lam``, and ``x``, ``y``: ``lam_d`` times ``mu_d`` and
    ``nu_d``) and the coefficients ``alpha``, ``beta`` and ``sends`` as linear expressions of
    them."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    inf = solver.infinity()
    k_chunks = p * v
    lam = [solver.NumVar(0, inf, f"lam{d}") for d in range(p)]
    x = [[solver.NumVar(0, inf, f"x{d}_{r}") for r in range(v)] for d in range(p)]
    y = [[solver.NumVar(0, inf, f"y{d}_{r}") for r in range(v)] for d in range(p)]
    solver.Add(sum(lam) == 1)
    for d in range(p):
        solver.Add(sum(x[d]) == lam[d])
        solver.Add(sum(y[d]) == lam[d])

    def coefficients(w: list[list[pywraplp.Variable]]) -> list:
        # later[j]: weight of paths whose chain passes chunk j (they start past it);
        # rounds_after[d][q]: d's weight on rounds after q.
        later = [solver.NumVar(0, inf, "") for _ in range(k_chunks + 1)]
        solver.Add(later[k_chunks] == 0)
        for j in range(k_chunks):
            solver.Add(later[j] == later[j + 1] + w[j % p][j // p])
        coef = []
        for d in range(p):
            after = solver.NumVar(0, inf, "")
            solver.Add(after == 0)
            run = [after]
            for q in range(v - 1, 0, -1):
                nxt = solver.NumVar(0, inf, "")
                solver.Add(nxt == run[-1] + w[d][q])
                run.append(nxt)
            run.reverse()  # run[q]: weight on d's rounds after q
            coef.append(run)
        return [later[k + 1] + m * lam[k % p] - p * coef[k % p][k // p]
                for k in range(k_chunks)]

    sends = sum((x[d][r] + y[d][r]) * (r * p + d) for d in range(p) for r in range(v))
    return solver, lam, x, y, coefficients(x), coefficients(y), sends


def _solved(solver: pywraplp.Solver, p: int, v: int, m: int, lam: list, x: list,
            y: list) -> Certificate:
    """The certificate of the LP's weights (recomputed exactly), or the plain one."""
    if solver.Solve() not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return _uniform(p, v, m)
    return evaluate(p, v, m, [z.solution_value() for z in lam],
                    [[z.solution_value() for z in row] for row in x],
                    [[z.solution_value() for z in row] for row in y])


@functools.lru_cache(maxsize=1024)
def certificate(p: int, v: int, m: int) -> Certificate:
    """Path weights for ``(p, v, m)`` from the LP (``m`` a multiple of ``p``, ``m >= p``)."""
    if p < 2:
        return _uniform(p, v, m)
    solver, lam, x, y, alpha, beta, _ = _program(p, v, m)
    val = solver.NumVar(-solver.infinity(), solver.infinity(), "val")
    for k in range(p * v):
        for phi in FORWARD_SHARES:
            solver.Add(phi * alpha[k] + (1 - phi) * beta[k] >= val)
    solver.Maximize(val)
    return _solved(solver, p, v, m, lam, x, y)


def certificate_for(p: int, v: int, m: int, costs: list[list[list[tuple[float, float]]]],
                    sizes: list[int], send: float) -> Certificate:
    """Path weights that make the bound itself largest for these costs: ``costs[c][k]`` the
    (forward, backward) of a layer of class ``c`` in chunk ``k`` under each mode it may run
    in, ``sizes[c]`` the class's layers, ``send`` the least send. For chunks of unlike cost
    (a heterogeneous cluster: chunk k on device k mod p's group), where the weights tuned for
    like chunks would spread over devices that do not bound the step."""
    if p < 2:
        return _uniform(p, v, m)
    solver, lam, x, y, alpha, beta, sends = _program(p, v, m)
    inf = solver.infinity()
    least = [solver.NumVar(-inf, inf, f"z{c}") for c in range(len(sizes))]
    for c, per_chunk in enumerate(costs):
        for k, modes in enumerate(per_chunk):
            for forward, backward in modes:
                solver.Add(least[c] <= alpha[k] * forward + beta[k] * backward)
    solver.Maximize(sum(n * z for n, z in zip(sizes, least, strict=True)) + send * sends)
    return _solved(solver, p, v, m, lam, x, y)


def fitted_to_splits(p: int, v: int, m: int, costs: Costs,
                     layer_class: list[int], send: float, start: Certificate
                     ) -> Certificate:
    """Path weights whose ``contiguous`` bound (plus ``sends * send``) is the largest found,
    from ``start`` on: the weights of ``certificate`` make every chunk's coefficients alike,
    which is best when layers may go anywhere, but when chunks hold one or two whole layers
    the fill through the first chunks costs whole layers and other weights bound more
    (Llama-3-405B, 32 devices x 4 chunks of one layer: 4.49 -> 4.66 s).

    Column generation over the splits: an LP (the weights of ``_program``) maximises the
    least over the splits found so far of their weighted length, whose least split under
    the new weights (``contiguous``) joins. Probing midway between the best weights and the
    LP's (a stabilisation: the LP's own weights jump between extremes) and stopping after
    ``STALLED_ROUNDS`` rounds without gain keep it to a few rounds. Any weights give a valid
    bound, so stopping early only costs strength."""
    if p < 2:
        return start
    program = _fitting_program(p, v, m)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    solver.LoadModelFromProto(program.proto)
    variables = solver.variables()
    z = variables[program.z]
    alphas, betas, sends = program.alphas, program.betas, program.sends
    table = _table(costs)
    fastest_mode = np.argmin(table.sum(axis=3), axis=2)  # class x chunk
    fastest = np.take_along_axis(table, fastest_mode[..., None, None], axis=2)[:, :, 0, :]

    def value(cert: Certificate) -> tuple[float, tuple[int, ...]]:
        total, _, split = cert.contiguous(table, layer_class)
        return total + cert.sends * send, split

    def add_row(split: tuple[int, ...]) -> None:
        chunk_of = np.repeat(np.arange(len(split)), split)  # each layer's chunk
        per_layer = fastest[layer_class, chunk_of]  # layer x (forward, backward)
        forward = np.bincount(chunk_of, per_layer[:, 0], len(split))
        backward = np.bincount(chunk_of, per_layer[:, 1], len(split))
        row = forward @ alphas + backward @ betas + send * sends
        constraint = solver.Constraint(-solver.infinity(), 0.0)
        constraint.SetCoefficient(z, 1.0)
        for i in np.flatnonzero(row):
            constraint.SetCoefficient(variables[i], -float(row[i]))

    best, split = value(start)
    best_cert = start
    center = None  # the LP values of the best bound's weights (none while it is ``start``)
    stalled = 0
    for _ in range(SPLIT_ROUNDS):
        add_row(split)
        if solver.Solve() not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE) \
                or z.solution_value() <= best * (1 + 1e-9):
            break  # no weights bound the splits found so far by more
        values = np.array([q.solution_value() for q in variables])
        # Midway is a convex combination of two feasible points: still feasible.
        probe = values if center is None else (center + values) / 2
        cert = evaluate(p, v, m, probe[program.lam].tolist(), probe[program.x].tolist(),
                        probe[program.y].tolist())
        found, split = value(cert)
        if found > best:
            best, best_cert, center, stalled = found, cert, probe, 0
        else:
            stalled += 1
            if stalled >= STALLED_ROUNDS:
                break
    return best_cert


@dataclass(frozen=True)
class _FittingProgram:
    """``_program`` with ``z`` to maximise, as a model proto (loading it is far quicker than
    building it again), with each chunk's alpha and beta and the sends as coefficient rows
    over its variables (a constraint for a split is then two matrix products) and the
    indices of ``lam`` (p), ``x`` and ``y`` (p x v) and ``z``."""

    proto: linear_solver_pb2.MPModelProto
    alphas: np.ndarray
    betas: np.ndarray
    sends: np.ndarray
    lam: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: int


@functools.lru_cache(maxsize=64)
def _fitting_program(p: int, v: int, m: int) -> _FittingProgram:
    solver, lam, x, y, alpha, beta, sends = _program(p, v, m)
    z = solver.NumVar(-solver.infinity(), solver.infinity(), "z")
    solver.Maximize(z)
    count = solver.NumVariables()

    def coefficients(expr: Any) -> np.ndarray:
        row = np.zeros(count)
        for var, coef in expr.GetCoeffs().items():
            if isinstance(var, pywraplp.Variable):  # not the constant offset
                row[var.index()] += coef
        return row

    proto = linear_solver_pb2.MPModelProto()
    solver.ExportModelToProto(proto)
    return _FittingProgram(
        proto, np.array([coefficients(a) for a in alpha]),
        np.array([coefficients(b) for b in beta]), coefficients(sends),
        np.array([q.index() for q in lam]), np.array([[q.index() for q in row] for row in x]),
        np.array([[q.index() for q in row] for row in y]), z.index())
