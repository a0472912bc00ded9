"""The CP-SAT model of one shape: where the pipeline stages split the layers, and how many
layers of each class every chunk recomputes in each mode.

``StageModel.__init__`` builds the model once; ``StageModel.solve`` solves it under a bound
and returns one candidate at a time. The objective is a lower bound on the step time
``estimate`` gives the candidate (a valid bound for every split, so pruning with it is safe):

- pipeline: for every device ``d``, its ``m`` micro-batches of work, plus the first
  micro-batch's forward through the chunks before its first chunk and that micro-batch's
  backward back through them (the fill and drain it cannot avoid), plus for GPipe and 1F1B
  the wait for the first backward that its warm-up forwards cannot cover;
- the largest exposed data-parallel synchronisation of a device, and the longest optimizer
  update.

Times are integer nanoseconds and bytes integer bytes, every coefficient rounded down, so the
objective never exceeds the true bound and the memory constraint never excludes a split that
fits. The driver (``search.py``) evaluates each candidate with ``estimate``; candidates are
excluded one by one (a no-good cut) until the bound proves nothing better is left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autopar.cluster import NodeGroup
from autopar.config import ParallelConfig
from autopar.solver.paths import Path, critical_path
from autopar.solver.space import Shape
from autopar.solver.tables import MODES, ClassFigures, ShapeTables

if TYPE_CHECKING:
    from ortools.sat.python import cp_model

NS = 1e9  # integer time unit: nanoseconds

CUTS_PER_SOLVE = 16
"""Re-solves one ``solve`` call may make after cuts before it hands back (the shape then goes
back on the search's heap at its raised bound)."""

FIRST_SLICE = 0.25
"""CP-SAT's deterministic time (its own machine-independent seconds) for a shape's first
solve. A solve that runs out of it hands back unanswered with the bound it proved (the shape
goes back on the search's heap, other shapes get their turn) and the next one gets twice as
much: CP-SAT cannot resume, so doubling keeps the time lost to restarts below the time used,
and a model that needs long is still solved. Deterministic, unlike a wall-clock slice, so a
search without a time limit visits the same shapes in the same order on every run."""

Expr = Any
"""A CP-SAT linear expression or a plain int (OR-Tools' own stubs cannot express the mix)."""


def _ns(seconds: float) -> int:
    return math.floor(seconds * NS)


@dataclass(frozen=True)
class Candidate:
    """A split and per-layer recomputation the model proposes, with its lower bound."""

    layers_per_stage: tuple[int, ...]
    recompute: tuple[str, ...]
    bound: float
    """Lower bound on its step time, seconds."""

    def config(self, shape: Shape) -> ParallelConfig:
        """The shape's ParallelConfig with this split and recomputation (one mode for all
        layers written once)."""
        modes = self.recompute
        return shape.config(layers_per_stage=self.layers_per_stage if shape.pp > 1 else None,
                            recompute=modes[0] if len(set(modes)) == 1 else modes)


class StageModel:
    """CP-SAT model of the split and recomputation of one shape."""

    def __init__(self, tables: ShapeTables, *, minimize_memory: bool = False) -> None:
        # Imported here, not with the module: OR-Tools' CP-SAT module imports pandas (~0.3 s),
        # which a search that never builds a stage model (the split search served every
        # shape it visited) does not need.
        from ortools.sat.python import cp_model

        self.t = tables
        self.model = cp_model.CpModel()
        self._decisions: list[Expr] = []
        self._exhausted = False
        self.last_bound = 0.0
        """Bound of the last candidate: every later one has at least this bound (seconds)."""
        self.slice = FIRST_SLICE
        self.stalled = False
        """Whether the last ``solve`` ran out of its slice without an answer."""
        self._paths: set[Path] = set()
        classes = tables.layer_class
        num_layers, k_chunks = len(classes), tables.chunks
        num_classes = len(tables.representative)
        p, v, m = tables.shape.pp, tables.shape.virtual_stages, tables.micro_batches
        md = self.model

        # Chunk boundaries: chunk k holds layers [pos[k], pos[k+1]).
        self.pos: list[Expr] = [0]
        for k in range(1, k_chunks):
            var = md.new_int_var(k, num_layers - (k_chunks - k), f"pos{k}")
            self.pos.append(var)
            self._decisions.append(var)
        self.pos.append(num_layers)
        for k in range(k_chunks):
            md.add(self.pos[k + 1] >= self.pos[k] + 1)

        # Layers of each class before each boundary, and so in each chunk.
        prefix = [[0] * (num_layers + 1) for _ in range(num_classes)]
        for i, c in enumerate(classes):
            for cc in range(num_classes):
                prefix[cc][i + 1] = prefix[cc][i] + (cc == c)
        before: list[list[Expr]] = []
        for k in range(k_chunks + 1):
            row: list[Expr] = []
            for c in range(num_classes):
                if k in (0, k_chunks):
                    row.append(prefix[c][self.pos[k]])
                else:
                    var = md.new_int_var(0, prefix[c][-1], f"before{k}_{c}")
                    md.add_element(self.pos[k], prefix[c], var)
                    row.append(var)
            before.append(row)
        self.count = [[before[k + 1][c] - before[k][c] for c in range(num_classes)]
                      for k in range(k_chunks)]

        # Recomputed layers per chunk and class; the rest run without recomputation.
        self.mode_count: list[list[dict[str, Expr]]] = []
        for k in range(k_chunks):
            row_modes = []
            group = tables.groups[k % p]
            figures = tables.figures(group)
            for c in range(num_classes):
                total = prefix[c][-1]
                counts: dict[str, Expr] = {}
                for mode in ("selective", "full"):
                    useful = mode in tables.modes and (
                        mode == "full" or figures[c].cost.attention > 0
                        or figures[c].held["selective"] < figures[c].held["none"])
                    if useful:
                        var = md.new_int_var(0, total, f"{mode}{k}_{c}")
                        self._decisions.append(var)
                        counts[mode] = var
                    else:
                        counts[mode] = 0
                counts["none"] = self.count[k][c] - counts["selective"] - counts["full"]
                if "none" in tables.modes:
                    md.add(counts["none"] >= 0)
                else:
                    md.add(counts["none"] == 0)
                row_modes.append(counts)
            self.mode_count.append(row_modes)

        fwd: list[Expr] = []
        bwd: list[Expr] = []
        bwd_input: list[Expr] = []
        send: list[Expr] = []
        for k in range(k_chunks):
            figures = tables.figures(tables.groups[k % p])
            fwd.append(sum(self.mode_count[k][c][mode] * _ns(figures[c].forward(mode))
                           for c in range(num_classes) for mode in MODES))
            bwd.append(sum(self.mode_count[k][c][mode] * _ns(figures[c].backward(mode))
                           for c in range(num_classes) for mode in MODES))
            # Zero-bubble's input-gradient half (StageCost's default weight-gradient share).
            bwd_input.append(sum(self.mode_count[k][c][mode] * _ns(figures[c].backward(mode) / 2)
                                 for c in range(num_classes) for mode in MODES))
            if k < k_chunks - 1 and p > 1:
                table = [0] + [_ns(x) for x in tables.sends(tables.groups[k % p])]
                var = md.new_int_var(0, max(table), f"send{k}")
                md.add_element(self.pos[k + 1], table, var)
                send.append(var)
            else:
                send.append(0)

        self._chunk_costs = (fwd, bwd_input if tables.shape.schedule == "zero_bubble" else bwd,
                             send)
        self._cuts = not minimize_memory and p > 1
        zero_bubble = tables.shape.schedule == "zero_bubble"
        horizon = 0
        for k in range(k_chunks):
            figures = tables.figures(tables.groups[k % p])
            horizon += sum(prefix[c][-1] * (_ns(figures[c].forward("full"))
                                             + _ns(figures[c].backward("full")))
                           for c in range(num_classes))
        # Any path through the schedule crosses at most two sends per chunk and micro-batch:
        # on a slow network the sends may outlast all the compute.
        most_send = max((_ns(x) for g in tables.distinct_groups for x in tables.sends(g)),
                        default=0) if p > 1 else 0
        horizon = (horizon + 2 * k_chunks * most_send) * m + 1
        self.pipe = md.new_int_var(0, horizon, "pipeline")

        def most(per_layer: Callable[[ClassFigures, NodeGroup], float]) -> int:
            """A device's term at most: ``per_layer`` summed over every layer, on the device
            where that is largest (a sync or an optimizer step may outlast all the compute:
            a small model on a slow network)."""
            return max(sum(prefix[c][-1] * _ns(per_layer(tables.figures(g)[c], g))
                           for c in range(num_classes)) for g in tables.groups)

        dp_time = md.new_int_var(0, most(lambda f, g: f.dp_sync), "dp")
        opt_time = md.new_int_var(0, most(lambda f, g: f.params * tables.optimizer_rate(g)),
                                  "optimizer")
        peak = md.new_int_var(0, 2**50, "peak_bytes") if minimize_memory else None
        per_param, fixed = tables.state_bytes_per_param()
        for d in range(p):
            group = tables.groups[d]
            figures = tables.figures(group)
            mine = range(d, k_chunks, p)
            work = sum(fwd[k] + bwd[k] for k in mine)
            head = sum(fwd[k] + send[k] + (0 if zero_bubble else bwd[k] + send[k])
                       for k in range(d))
            pipe = m * work + head
            if v == 1 and d < p - 1:
                # GPipe, 1F1B and zero-bubble: before its first backward, device d waits for
                # the first micro-batch to pass forward and back (input gradients only, for
                # zero-bubble) through the later stages; only its warm-up forwards (none left
                # in GPipe) fill that time.
                back = bwd_input if zero_bubble else bwd
                chain = sum(fwd[k] + back[k] for k in range(d + 1, p)) + 2 * sum(
                    send[k] for k in range(d, p - 1))
                warmup = 0 if tables.shape.schedule == "gpipe" else min(p - d - 1, m - 1)
                idle = md.new_int_var(0, horizon, f"idle{d}")
                md.add(idle >= chain - warmup * fwd[d])
                pipe = pipe + idle
            md.add(self.pipe >= pipe)

            if tables.shape.dp * tables.shape.cp > 1:
                sync = sum(self.count[k][c] * _ns(figures[c].dp_sync)
                           for k in mine for c in range(num_classes))
                overlap = m * work if tables.shape.zero_stage >= 3 else sum(bwd[k] for k in mine)
                md.add(dp_time >= sync - overlap)
            rate = tables.optimizer_rate(group)
            md.add(opt_time >= sum(self.count[k][c] * _ns(figures[c].params * rate)
                                   for k in mine for c in range(num_classes)))

            share = tables.in_flight[d] / v
            held = sum(self.mode_count[k][c][mode] * math.floor(share * figures[c].held[mode])
                       for k in mine for c in range(num_classes) for mode in MODES)
            states = sum(self.count[k][c] * math.floor(figures[c].params * per_param)
                         for k in mine for c in range(num_classes))
            working = self._working(d, mine, figures)
            allocated = states + held + working + math.floor(fixed + tables.buffers)
            if peak is not None:
                md.add(peak >= allocated)
            else:
                md.add(allocated <= math.floor(tables.capacity(group)))

        if (tables.shape.schedule == "interleaved" and v > 1 and p > 1 and m % p == 0
                and not minimize_memory):
            self._interleaved_paths(fwd, bwd, send, horizon)

        if peak is not None:
            md.minimize(peak)
        else:
            md.minimize(self.pipe + dp_time + opt_time)
        self._objective_parts = (self.pipe, dp_time, opt_time)

    def _interleaved_paths(self, fwd: list[Expr], bwd: list[Expr], send: list[Expr],
                           horizon: int) -> None:
        """Every path ``L(d, r, c)`` of the interleaved schedule's graph (``bubble.py``) as a
        lower bound on the pipeline: micro-batch 0 forward through chunks ``0 .. rp+d-1`` to
        device d's round-r chunk, d's order from there to the last micro-batch's backward of
        its round-c chunk (all of d's work but ``p`` forwards of each of its rounds before r
        and ``p`` backwards of each before c), that micro-batch back through chunks
        ``cp+d-1 .. 0``. For each device, the pipeline is at least ``m Y_d`` plus the longest
        forward part plus the longest backward part (they are chosen independently), so
        ``2 p v`` constraints add all ``p v^2`` paths; the cuts then start from them."""
        md = self.model
        p, v, m = self.t.shape.pp, self.t.shape.virtual_stages, self.t.micro_batches
        k_chunks = p * v

        def as_vars(xs: list[Expr], name: str) -> list[Expr]:
            out: list[Expr] = []
            for k, x in enumerate(xs):
                if isinstance(x, int):
                    out.append(x)
                    continue
                var = md.new_int_var(0, horizon, f"{name}{k}")
                md.add(var == x)
                out.append(var)
            return out

        def through(xs: list[Expr], name: str) -> list[Expr]:
            """through[j]: chunks 0 .. j-1 and the sends after them."""
            run: list[Expr] = [0]
            for k in range(k_chunks - 1):
                var = md.new_int_var(0, horizon, f"{name}{k}")
                md.add(var == run[-1] + xs[k] + send[k])
                run.append(var)
            return run

        f, b = as_vars(fwd, "f"), as_vars(bwd, "b")
        f_through, b_through = through(f, "fthrough"), through(b, "bthrough")
        for d in range(p):
            ends = []
            for xs, run, name in ((f, f_through, "fpart"), (b, b_through, "bpart")):
                end = md.new_int_var(0, horizon, f"{name}{d}")
                for r in range(v):
                    md.add(end >= run[r * p + d] - p * sum(xs[q * p + d] for q in range(r)))
                ends.append(end)
            work = sum(f[k] + b[k] for k in range(d, k_chunks, p))
            md.add(self.pipe >= m * work + ends[0] + ends[1])

    def _working(self, d: int, mine: range, figures: list) -> Expr:
        """Bytes the largest fully recomputed layer of device ``d`` needs while it runs."""
        if "full" not in self.t.modes:
            return 0
        md = self.model
        working = md.new_int_var(0, 2**50, f"working{d}")
        for c, fig in enumerate(figures):
            full = [self.mode_count[k][c]["full"] for k in mine]
            if all(isinstance(f, int) for f in full):
                continue
            used = md.new_bool_var(f"full_used{d}_{c}")
            limit = len(self.t.layer_class)
            for f in full:
                md.add(f <= limit * used)
            md.add(working >= math.floor(fig.working) * used)
        return working

    def solve(self, below: float | None, time_limit_s: float | None
              ) -> tuple[Candidate | None, bool]:
        """The candidate with the smallest bound, if any bound is below ``below`` seconds.

        Returns (candidate, proven): ``proven`` is False when the time limit (or the share of
        re-solves one call may take) stopped the search before it could tell. Each returned
        candidate is excluded from later solves.

        Each solution's critical path through the schedule (``paths``) is added as a cut: a
        lower bound on the pipeline of every split. Where it shows the solution's own bound
        was short by enough that it cannot beat ``below``, the model is solved again.

        The call's CP-SAT solves, re-solves included, run at most ``slice`` deterministic
        seconds together (``FIRST_SLICE``); a call that runs out returns unanswered
        (``stalled``), with the bound it proved kept in ``last_bound``, and doubles the slice.
        A call whose re-solves were all cut off is ``stalled`` too (its cuts stay).
        """
        self.stalled = False
        if self._exhausted:
            return None, True
        if below is not None:
            # The bound only tightens from call to call, so it stays in the model.
            self.model.add(sum(self._objective_parts) <= math.ceil(below * NS) - 1)
        from ortools.sat.python import cp_model  # loaded by __init__ already

        start = time.perf_counter()
        budget = self.slice  # deterministic seconds left to this call, re-solves included
        for _ in range(CUTS_PER_SOLVE):
            if budget <= 0:
                return self._ran_out()
            solver = cp_model.CpSolver()
            solver.parameters.num_workers = 1
            solver.parameters.random_seed = 0
            solver.parameters.max_deterministic_time = budget
            if time_limit_s is not None:
                left = time_limit_s - (time.perf_counter() - start)
                if left <= 0:
                    return None, False
                solver.parameters.max_time_in_seconds = max(0.01, left)
            status = solver.solve(self.model)
            budget -= solver.deterministic_time
            if status == cp_model.INFEASIBLE:
                return None, True
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                # Out of time: what it proved still holds for every split not yet proposed
                # (those at or above ``below`` are ruled out by the model's constraint).
                proved = solver.best_objective_bound / NS
                if math.isfinite(proved):
                    self.last_bound = max(self.last_bound, proved if below is None
                                          else min(proved, below))
                return self._ran_out()
            # No later solution has a smaller objective than this one's bound.
            self.last_bound = max(self.last_bound, solver.best_objective_bound / NS)
            if self._cuts and below is not None:
                longest = self._cut(solver)
                pipe, dp, opt = (solver.value(x) for x in self._objective_parts)
                if longest > pipe and (longest + dp + opt) / NS >= below:
                    continue  # the cut rules it out (or, solved again, gives its true bound)
            candidate = self._read(solver)
            self._exclude(solver)
            if status != cp_model.OPTIMAL and budget <= 0:
                self.slice *= 2  # a solution, but the slice ran out before it was proven least
            return candidate, status == cp_model.OPTIMAL
        self.stalled = True  # every re-solve was cut off: no answer this time either
        return None, False

    def _ran_out(self) -> tuple[None, bool]:
        """The slice ran out before an answer: the next call gets twice as much."""
        self.slice *= 2
        self.stalled = True
        return None, False

    def _cut(self, solver: cp_model.CpSolver) -> int:
        """Add the critical path of the solution's split as a lower bound on the pipeline of
        every split; return its length (ns) for this solution."""
        t = self.t
        fwd, bwd, send = ([int(solver.value(x)) if not isinstance(x, int) else x for x in xs]
                          for xs in self._chunk_costs)
        length, path = critical_path(t.shape.schedule, t.shape.pp, t.micro_batches,
                                     t.shape.virtual_stages, fwd, bwd, send)
        if path not in self._paths:
            self._paths.add(path)
            f, b, s = self._chunk_costs
            self.model.add(self.pipe >= sum(
                n * x for counts, xs in ((path.forwards, f), (path.backwards, b),
                                         (path.sends, s))
                for n, x in zip(counts, xs, strict=True) if n))
        return length

    def _read(self, solver: cp_model.CpSolver) -> Candidate:
        t = self.t
        cuts = [0] + [solver.value(x) for x in self.pos[1:-1]] + [len(t.layer_class)]
        counts = tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))
        modes: list[str] = []
        for k in range(t.chunks):
            left = {(c, mode): solver.value(self.mode_count[k][c][mode])
                    for c in range(len(t.representative)) for mode in ("full", "selective")}
            for i in range(cuts[k], cuts[k + 1]):
                c = t.layer_class[i]
                for mode in ("full", "selective"):
                    if left[(c, mode)]:
                        left[(c, mode)] -= 1
                        modes.append(mode)
                        break
                else:
                    modes.append("none")
        bound = solver.objective_value / NS
        return Candidate(counts, tuple(modes), bound)

    def _exclude(self, solver: cp_model.CpSolver) -> None:
        """No-good cut: at least one decision differs from the solution just read."""
        md = self.model
        literals = []
        for var in self._decisions:
            differs = md.new_bool_var("")
            md.add(var != solver.value(var)).only_enforce_if(differs)
            literals.append(differs)
        if literals:
            md.add_bool_or(literals)
        else:
            self._exhausted = True  # nothing to decide: the one candidate has been seen
