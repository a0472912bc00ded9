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

from ortools.linear_solver import pywraplp

FORWARD_SHARES = (0.25, 1 / 3)
"""Forward shares of a chunk's work the weights are tuned for (full recomputation to none,
with the backward twice the forward); the bound is valid whatever the shares are."""


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

    def weighted(self, costs: list[list[list[tuple[float, float]]]], sizes: list[int]
                 ) -> tuple[float, bool]:
        """The least of ``sum_k alpha_k F_k + beta_k B_k`` over every split, with
        ``costs[c][k]`` the (forward, backward) of a layer of class ``c`` in chunk ``k`` under
        each mode it may run in and ``sizes[c]`` the class's layers: each layer at its least
        weighted cost over the chunks and modes. Also whether every class's fastest mode is
        at most every other both forward and backward in every chunk (then recomputation
        beyond it adds at least the least coefficient times its time)."""
        total, dominated = 0.0, True
        for size, per_chunk in zip(sizes, costs, strict=True):
            least = math.inf
            for a, b, modes in zip(self.alpha, self.beta, per_chunk, strict=True):
                fastest = min(modes, key=sum)
                if all(f >= fastest[0] and g >= fastest[1] for f, g in modes):
                    least = min(least, a * fastest[0] + b * fastest[1])
                else:
                    dominated = False
                    least = min(least, min(a * f + b * g for f, g in modes))
            total += size * least
        return total, dominated


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


def _program(p: int, v: int, m: int) -> tuple[pywraplp.Solver, list, list, list, list, list]:
    """The weights as LP variables (``lam``, and ``x``, ``y``: ``lam_d`` times ``mu_d`` and
    ``nu_d``) and the coefficients ``alpha``, ``beta`` as linear expressions of them."""
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

    return solver, lam, x, y, coefficients(x), coefficients(y)


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
    solver, lam, x, y, alpha, beta = _program(p, v, m)
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
    solver, lam, x, y, alpha, beta = _program(p, v, m)
    inf = solver.infinity()
    least = [solver.NumVar(-inf, inf, f"z{c}") for c in range(len(sizes))]
    for c, per_chunk in enumerate(costs):
        for k, modes in enumerate(per_chunk):
            for forward, backward in modes:
                solver.Add(least[c] <= alpha[k] * forward + beta[k] * backward)
    sends = sum((x[d][r] + y[d][r]) * (r * p + d) for d in range(p) for r in range(v))
    solver.Maximize(sum(n * z for n, z in zip(sizes, least, strict=True)) + send * sends)
    return _solved(solver, p, v, m, lam, x, y)
