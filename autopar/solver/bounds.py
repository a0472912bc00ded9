"""Lower bounds on the step time of a shape or a family of shapes, valid for every split and
recomputation, from per-layer figures alone (``docs/solver.md``, "How it searches" 1-2).

``shape_bound`` gives one shape's bound and whether its devices can hold it at all;
``family_bound`` one valid for every shape of a family (its degrees and micro-batch size);
``has_bubble_bound`` says whether a lazy pipeline term applies (the interleaved bubble, an LP
and a shortest path; the whole-layer fill, a dynamic program), which the search adds only when
a shape is about to be solved. Every figure comes from ``ShapeTables``, so
from the functions ``estimate`` itself uses; the search (``search.py``) prunes with these and
nothing else, so a bound above the truth would lose the optimum: each term is tested against
``estimate()`` of every split of small cases (``tests/test_planner.py``).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
from autopar.cost_models.memory import FRAGMENTATION, FRAMEWORK_BYTES

from autopar.cluster import NodeGroup
from autopar.solver.bubble import Certificate, certificate, certificate_for, fitted_to_splits
from autopar.solver.tables import ShapeTables

ROUNDING = 1e-9
"""Relative margin taken off every bound: it sums the same figures as ``estimate`` in another
order, and a bound a rounding error above the truth could prune the best plan."""


def _work(t: ShapeTables) -> tuple[float, float, float]:
    """(least per-micro-batch work of all layers, least critical chain of one micro-batch with
    weight gradients off it, least optimizer time over the devices), over the device groups
    and allowed recomputation modes. On a heterogeneous cluster each layer counts at its
    cheapest group's figures (where the split puts it is not known)."""
    s = t.shape
    groups = t.distinct_groups
    key = ("work", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size,
           tuple(id(g) for g in groups))
    if key not in t.costs:
        options = _options(t)
        work = chain = params = 0.0
        base = t.base(groups[0])
        for cls, size in enumerate(t.classes.size):
            work += size * min(w for w, _ in options[cls])
            chain += size * min(c for _, c in options[cls])
            params += size * base[cls].params
        t.costs[key] = (work, chain, params)
    work, chain, params = t.costs[key]  # type: ignore[misc]
    # Every device holds the same parameters per layer: only the rate differs by group.
    optimizer = min(params * t.optimizer_rate(g) / s.pp for g in groups)
    return work, chain, optimizer


def mode_work(t: ShapeTables, group: NodeGroup) -> list[list[float]]:
    """Per class, per allowed mode: forward + backward of one layer on ``group`` per
    micro-batch (seconds), shared by every shape with the same tp, sp, cp and micro-batch."""
    s = t.shape
    key = ("mode work", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, id(group))
    if key not in t.costs:
        t.costs[key] = [[f.forward(mode) + f.backward(mode) for mode in t.modes]
                        for f in t.base(group)]
    return t.costs[key]  # type: ignore[return-value]


def least_work(t: ShapeTables, group: NodeGroup) -> list[float]:
    """Per class: one layer's work on ``group`` at its cheapest allowed mode."""
    return [min(row) for row in mode_work(t, group)]


def _options(t: ShapeTables) -> list[list[tuple[float, float]]]:
    """Per class, per allowed mode: the least over the stages' node groups of its work
    (forward + backward) and of its chain (forward + half the backward), seconds."""
    s = t.shape
    groups = t.distinct_groups
    key = ("options", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size,
           tuple(id(g) for g in groups))
    if key not in t.costs:
        figures = [t.base(g) for g in groups]
        works = [mode_work(t, g) for g in groups]
        options = []
        for cls in range(len(t.classes.size)):
            options.append([
                (min(w[cls][j] for w in works),
                 min(f[cls].forward(mode) + f[cls].backward(mode) / 2 for f in figures))
                for j, mode in enumerate(t.modes)])
        t.costs[key] = options
    return t.costs[key]  # type: ignore[return-value]


def _speed_share(t: ShapeTables) -> float:
    """Sum over the stages of 1 / rho, rho being how many times slower than the cheapest
    group the stage's group is at least, over classes and modes: the number of stages for a
    homogeneous cluster. The busiest device then takes at least (least work) / this: device
    d's time is at least rho_d x (its layers at their cheapest), and those add up to the
    least work."""
    s = t.shape
    groups = t.distinct_groups
    if len(groups) == 1:
        return float(s.pp)
    key = ("speed share", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, s.pp)
    if key not in t.costs:
        options = _options(t)
        rho: dict[int, float] = {}
        for g in groups:
            f = t.base(g)
            ratios = [(f[c].forward(mode) + f[c].backward(mode)) / options[c][j][0]
                      for c in range(len(t.classes.size)) for j, mode in enumerate(t.modes)
                      if options[c][j][0] > 0]
            rho[id(g)] = max(1.0, min(ratios, default=1.0))
        t.costs[key] = sum(1 / rho[id(g)] for g in t.groups) * (1 + ROUNDING)
    return t.costs[key]  # type: ignore[return-value]


def shape_bound(t: ShapeTables, *, bubble: bool = False, enough: float = math.inf
                ) -> tuple[float, bool]:
    """(step-time lower bound, whether the devices can hold it) of one shape, valid for every
    split and recomputation; with ``bubble``, also the lazy pipeline term: the interleaved
    bubble (``_interleaved_bubble``) or the whole-layer fill (``_whole_layer_fill``), each
    computed once per setting it reads. ``enough``: the step time the shape must reach to be
    pruned (the best plan's); past it, the interleaved bubble skips its costliest part."""
    shape, m, p = t.shape, t.micro_batches, t.shape.pp
    work, zb_chain, optimizer = _work(t)
    fits, recompute = _least_recompute(t)
    work += recompute
    # The least recomputation over and above each group's own fastest mode (the terms that
    # take each layer at its own group's cost): on one group the same figure.
    extra = recompute if len(t.distinct_groups) == 1 else _least_recompute(t, own=True)[1]
    # Every device's share of the work, and the first micro-batch's pass through all layers
    # (only input gradients for zero-bubble, whose weight gradients wait).
    pipe = max(m * work / _speed_share(t), zb_chain if shape.schedule == "zero_bubble" else work,
               m * _least_busiest(t, extra))
    if shape.schedule == "interleaved" and shape.virtual_stages > 1 and len(t.distinct_groups) == 1:
        pipe = max(pipe, m * work / p + interleaved_sends(p, shape.virtual_stages, m)
                   * _least_send(t))
    if bubble and has_bubble_bound(t):
        if shape.virtual_stages > 1:
            # What the pipeline term must reach for the bound to reach ``enough``.
            needed = enough - optimizer - _least_dp_exposed(t, work)
            pipe = max(pipe, _interleaved_bubble(t, extra, needed))
        else:
            pipe = max(pipe, _whole_layer_fill(t))
    if shape.virtual_stages == 1 and p > 1:
        # Device d needs m * C_d plus the first micro-batch's forward (and, but for
        # zero-bubble, backward) through the stages before it, at least a share ``phi`` of
        # their work. The best any split can do equalises these: each stage's work is
        # (m - phi) / m of the one before, and the first stage's is W phi / (m (1 - r^p)).
        phi = 1.0 if shape.schedule != "zero_bubble" else _forward_share(t)
        r = (m - phi) / m
        pipe = max(pipe, work * phi / (1 - r**p))
    bound = pipe + optimizer + _least_dp_exposed(t, work)
    if shape.zero_stage >= 3 and shape.dp * shape.cp > 1:
        # ZeRO-3 overlaps a device's sync with all its m micro-batches' work, which the
        # pipeline takes at least: the step is at least the sync itself on every device, and
        # some device holds at least 1/pp of all layers' sync.
        bound = max(bound, _least_sync(t) / p + optimizer)
    return bound * (1 - ROUNDING), fits


def interleaved_sends(p: int, v: int, m: int) -> float:
    """How many sends the interleaved schedule exposes at least, on top of ``m/p`` of all the
    work per micro-batch, whatever the split (``m`` a multiple of ``p``).

    Two kinds of paths of its fixed-order graph (``paths.py``), with ``Y_d`` device ``d``'s
    work per micro-batch, ``y_k`` chunk ``k``'s, ``s`` the least send and ``K = p v``:

    - ``P_d`` (d < p - 1): micro-batch 0 forward to device d's first chunk (d sends), all of
      d's order, micro-batch m-1 backward from there (d sends): at least ``m Y_d + 2 d s``;
    - ``Q``: micro-batch 0 forward through every chunk but the last (K - 1 sends), device
      p-1's order from that forward (its last chunk's, after p forwards of each earlier round)
      to the last backward of its last chunk (before p backwards of each earlier round),
      micro-batch m-1 backward to the first chunk (K - 1 sends): at least
      ``W + (m - p) Y_{p-1} + 2 (K - 1) s`` with ``W`` all the work.

    With weights ``lam = m / (p (m - p + 1))`` on Q and ``mu = (m - p) / (p (m - p + 1))`` on
    each P_d (they add up to 1), every device's work counts ``m / p`` times: the step time is
    at least ``m W / p + 2 s (lam (K - 1) + mu (p - 1)(p - 2) / 2)``. Returns the factor of s.
    """
    lam = m / (p * (m - p + 1))
    mu = (m - p) / (p * (m - p + 1))
    return 2 * (lam * (p * v - 1) + mu * (p - 1) * (p - 2) / 2)


def has_bubble_bound(t: ShapeTables) -> bool:
    """Whether ``shape_bound(bubble=True)`` adds a term: ``_interleaved_bubble`` for
    interleaved chunks, ``_whole_layer_fill`` for one stage per device."""
    return t.shape.pp > 1


def _whole_layer_fill(t: ShapeTables) -> float:
    """Least pipeline time over every split of whole layers into one stage per device, by
    the paths that run the first micro-batch's forward through stages ``0 .. d-1`` (for
    GPipe and 1F1B, also the last one's backward back through them), with a send at each
    boundary, and all of device ``d``'s operations, which start with that forward: at least
    ``m Y_d + sum_{k<d} fill_k + d c`` for every d.

    Each layer's own work ``Y`` is its least (forward + backward) over the allowed modes on
    the device's group, its ``fill`` the least over groups and modes of its forward
    (zero-bubble, whose weight gradients need not follow) or forward + backward, and ``c``
    the least send (twice for the drain). The least over splits of the largest of these is a
    dynamic program over (stage, first layer); it is exact for these figures, so with many
    stages and few layers each (every stage holds one layer at least) it sees what the
    fractional split of ``shape_bound`` cannot: on Llama-3-405B at pp 128 the stages are
    one layer each and the fill is the forward of 127 of them."""
    s = t.shape
    p, m, zero_bubble = s.pp, t.micro_batches, s.schedule == "zero_bubble"
    # All it reads (the stage groups follow from pp, the modes from the search).
    key = ("whole-layer fill", s.tp, s.sequence_parallel, s.cp, s.dp, s.micro_batch_size, p, m,
           zero_bubble)
    if key not in t.costs:
        classes = t.layer_class
        n = len(classes)
        if zero_bubble:
            fill = [min(f[c].forward(mode) for f in (t.base(g) for g in t.distinct_groups)
                        for mode in t.modes) for c in range(len(t.classes.size))]
        else:
            fill = [min(work) for work in zip(*(least_work(t, g) for g in t.distinct_groups),
                                              strict=True)]
        fill_before = np.concatenate(([0.0], np.cumsum([fill[c] for c in classes])))
        send = _least_send(t) * (1 if zero_bubble else 2)
        later = np.full(n + 1, math.inf)  # least over the stages after d, by first layer
        later[n] = 0.0
        works: dict[int, np.ndarray] = {}
        for d in range(p - 1, -1, -1):
            group = t.groups[d]
            if id(group) not in works:
                own = least_work(t, group)
                works[id(group)] = np.concatenate(([0.0], np.cumsum([own[c] for c in classes])))
            work_before = works[id(group)]
            # Stage d starts after d layers and ends before one for each later stage.
            first = np.arange(d, n - (p - d) + 1)[:, None]
            last = np.arange(d + 1, n - (p - 1 - d) + 1)[None, :]
            stage = m * (work_before[last] - work_before[first]) + fill_before[first] + d * send
            least = np.where(last > first, np.maximum(stage, later[last]), math.inf).min(axis=1)
            later = np.full(n + 1, math.inf)
            later[first[:, 0]] = least
        t.costs[key] = float(later[0])
    return t.costs[key]  # type: ignore[return-value]


def _interleaved_bubble(t: ShapeTables, recompute: float, enough: float = math.inf
                        ) -> float:
    """Least pipeline time of an interleaved shape over every split: the weighted paths of
    ``bubble.py``, ``sum_k alpha_k F_k + beta_k B_k + sends s``, least over every split of the
    layers into chunks of one layer at least (``Certificate.contiguous``), each layer at its
    least weighted cost over the modes, at the costs of its chunk's node group, and
    ``recompute`` (the least recomputation that lets activations
    fit, beyond each class's fastest mode) at the least coefficient of any chunk, where every
    allowed mode costs at least the fastest one both forward and backward. The weights start
    from ``certificate`` (per (p, v, m)) on one node group; on several, from the LP's for the
    groups' own costs (``certificate_for``), so the slower group's devices weigh more; where
    chunks hold one layer each they are then fitted to the splits (``fitted_to_splits``),
    but only while the bound is below ``enough``: the search passes what the pipeline must
    reach for the shape to lose to the best plan, and the best plan only gets faster, so a
    bound already there prunes for good without the fitting (20-130 ms on Llama-3-405B)."""
    s = t.shape
    m, p, k_chunks = t.micro_batches, s.pp, t.chunks
    # All it reads but the least send, which the result takes as a factor (the weights are
    # valid whatever send they were fitted for).
    key = ("bubble", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, p, s.virtual_stages,
           m)
    if key not in t.costs:
        figures = [t.base(t.groups[k % p]) for k in range(k_chunks)]
        costs = [[[(f[c].forward(mode), f[c].backward(mode)) for mode in t.modes]
                  for f in figures] for c in range(len(t.classes.size))]
        # Shapes that trade context parallelism for micro-batch size keep these costs (and
        # the least send): they share one certificate.
        t.costs[key] = (("bubble by costs", p, s.virtual_stages, m, _least_send(t),
                         tuple(tuple(map(tuple, row)) for row in costs)), costs)
    by_costs, costs = cast(tuple[tuple, list], t.costs[key])

    def value(terms: _BubbleTerms) -> float:
        weighted, coefficient, sends, _ = terms
        return weighted + coefficient * recompute + sends * _least_send(t)

    terms = cast(_BubbleTerms | None, t.costs.get(by_costs)) or _bubble_terms(t, costs)
    # Seven chunks in eight at least hold a single layer: the fill runs through whole layers,
    # and weights fitted to the splits bound far more (Llama-3-405B: 4.49 -> 4.66 s at 32 x 4
    # chunks of its 129 layers). With more layers per chunk they gained nothing measurable
    # for their time (32 x 3, 16 x 7 chunks).
    if len(t.layer_class) - k_chunks <= k_chunks // 8 and terms[3] is not None \
            and value(terms) < enough:
        terms = _bubble_terms(t, costs, start=terms[3])
    t.costs[by_costs] = terms
    return value(terms)


_BubbleTerms = tuple[float, float, float, Certificate | None]
"""(least weighted cost over contiguous splits, least coefficient of recomputation, factor of
the least send, the certificate to fit to the splits from: None once fitted)."""


def _bubble_terms(t: ShapeTables, costs: list, start: Certificate | None = None
                  ) -> _BubbleTerms:
    """``_interleaved_bubble``'s figures for chunk costs ``costs`` (per class, chunk, mode):
    from the starting certificate, or, given it as ``start``, from its weights fitted to the
    splits (the start is not built twice: on several node groups it is an LP)."""
    s = t.shape
    p, m = s.pp, t.micro_batches
    if start is not None:
        cert = fitted_to_splits(p, s.virtual_stages, m, costs, t.layer_class, _least_send(t),
                                start)
    elif len(t.distinct_groups) == 1:
        cert = certificate(p, s.virtual_stages, m)
    else:
        cert = certificate_for(p, s.virtual_stages, m, costs, list(t.classes.size),
                               _least_send(t))
    total, dominated, _ = cert.contiguous(costs, t.layer_class)
    least_coefficient = min(min(a, b) for a, b in cert.pairs) if dominated else 0.0
    return total, least_coefficient, cert.sends, cert if start is None else None


def _least_send(t: ShapeTables) -> float:
    """The least send after any layer that can end a chunk (all but the last)."""
    key = ("least send", t.shape.tp, t.shape.sequence_parallel, t.shape.cp, t.shape.dp,
           t.shape.micro_batch_size, t.shape.pp)
    if key not in t.costs:
        t.costs[key] = min((min(t.sends(g)[:-1], default=0.0) for g in t.distinct_groups),
                           default=0.0)
    return t.costs[key]  # type: ignore[return-value]


def _least_sync(t: ShapeTables) -> float:
    """Data-parallel sync seconds of all layers together, each at its cheapest group."""
    s = t.shape
    key = ("least sync", s.tp, s.sequence_parallel, s.cp, s.dp, s.micro_batch_size,
           s.zero_stage, s.pp)
    if key not in t.costs:
        figures = [t.figures(g) for g in t.distinct_groups]
        t.costs[key] = sum(size * min(f[c].dp_sync for f in figures)
                           for c, size in enumerate(t.classes.size))
    return t.costs[key]  # type: ignore[return-value]


SUBSET_SUMS = 1 << 16
"""Most distinct partial loads ``_least_busiest`` keeps before it gives up (a model with
many classes of layers): it then bounds by the average alone."""


def _least_busiest(t: ShapeTables, recompute: float) -> float:
    """Least per-micro-batch work of the busiest device: on one node group, whole layers
    (below); on two, ``_least_busiest_of_two`` with the least ``recompute`` time the
    activations need; 0 where unknown (three groups or more).

    The busiest device's work is at least the average, and it is the sum of some of the
    layers' (each at least at its cheapest mode): so it is at least the least sum of whole
    layers, so many of each class, that reaches the average."""
    s = t.shape
    if len(t.distinct_groups) == 2:
        return _least_busiest_of_two(t, recompute)
    if len(t.distinct_groups) > 1 or s.pp == 1:
        return 0.0
    key = ("least busiest", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, s.pp)
    if key not in t.costs:
        options = _options(t)
        least = [min(w for w, _ in options[c]) for c in range(len(t.classes.size))]
        target = sum(n * w for n, w in zip(t.classes.size, least, strict=True)) / s.pp
        target *= 1 - ROUNDING  # summed in another order than estimate's
        below = {0.0}  # partial sums still short of the target
        reached = math.inf
        for n, w in zip(t.classes.size, least, strict=True):
            grown = set()
            for total in below:
                for k in range(n + 1):
                    x = total + k * w
                    if x >= target:
                        reached = min(reached, x)
                        break
                    grown.add(x)
            below = grown
            if len(below) > SUBSET_SUMS:
                reached = target
                break
        t.costs[key] = reached if reached < math.inf else target
    return t.costs[key]  # type: ignore[return-value]


def _least_busiest_of_two(t: ShapeTables, recompute: float = 0.0) -> float:
    """Least per-micro-batch work of the busiest device when the stages lie on two node groups
    A and B (``n_A`` and ``n_B`` stages): the least ``T`` such that the layers, split between
    the groups even in fractions, load A's devices ``<= n_A T`` and B's ``<= n_B T`` in all,
    each layer at its cheapest allowed mode on the group it is on (the busiest device of a
    group takes at least the group's average; fractions only relax whole layers), and
    ``recompute`` (the least recomputation the activations need, each mode priced at the
    least over the groups of its cost beyond that group's fastest mode:
    ``_least_recompute(own=True)``, so at least that much wherever it runs) as one more piece
    of work that costs the same on either group. Optimal:
    move layers from B to A in increasing order of their cost ratio A / B (an exchange
    argument) until A's average load reaches B's. Unlike the speed share, which takes every
    layer at the one smallest ratio, it lets a layer's ratio be its own: on A100 + H100 the
    memory-bound layers are ~1.7x slower on the A100, the matmul-bound ones ~3x."""
    s = t.shape
    groups = t.distinct_groups
    key = ("busiest of two", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, s.pp,
           recompute)
    if key not in t.costs:
        stages = [sum(1 for g in t.groups if g is group) for group in groups]
        per_group = [least_work(t, group) + [recompute] for group in groups]
        sizes = [*t.classes.size, 1]
        classes = sorted(range(len(sizes)), key=lambda c: (
            per_group[0][c] / per_group[1][c] if per_group[1][c] > 0 else math.inf, c))
        load_a = 0.0
        load_b = sum(n * w for n, w in zip(sizes, per_group[1], strict=True))
        (n_a, n_b), best = stages, load_b / stages[1]
        for c in classes:
            size, a, b = sizes[c], per_group[0][c], per_group[1][c]
            if a == b == 0:
                continue  # free on both: moves nothing (and would divide by zero below)
            moved_a, moved_b = load_a + size * a, load_b - size * b
            if moved_a / n_a >= moved_b / n_b:
                # A's average reaches B's within this class: where they cross.
                share = (n_a * load_b - n_b * load_a) / (size * (n_b * a + n_a * b))
                best = min(best, (load_a + share * size * a) / n_a)
                break
            load_a, load_b = moved_a, moved_b
            best = min(best, load_b / n_b)
        t.costs[key] = best * (1 - ROUNDING)
    return t.costs[key]  # type: ignore[return-value]


def _forward_share(t: ShapeTables) -> float:
    """The least share of a layer's work that is its forward pass, over classes and modes."""
    s = t.shape
    key = ("forward share", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size,
           tuple(id(g) for g in t.distinct_groups))
    if key not in t.costs:
        t.costs[key] = min(f.forward(mode) / (f.forward(mode) + f.backward(mode))
                           for g in t.distinct_groups for f in t.base(g) for mode in t.modes
                           if f.forward(mode) + f.backward(mode) > 0)
    return t.costs[key]  # type: ignore[return-value]


def _least_dp_exposed(t: ShapeTables, work: float) -> float:
    """Some device exposes at least the average of what sync exceeds overlap by.

    Device d exposes at least its layers' sync minus their overlap, each on d's own group
    (ZeRO-0/1's one all-reduce is affine in its size: at least the layers' bandwidth
    shares). So each layer counts at the least (sync - overlap) over the stages' groups:
    on a heterogeneous cluster one group's figures for every layer are no bound (a faster
    network elsewhere exposes less)."""
    s = t.shape
    if s.dp * s.cp == 1:
        return 0.0
    groups = t.distinct_groups
    key = ("dp exposed", s.tp, s.sequence_parallel, s.cp, s.dp, s.micro_batch_size,
           s.zero_stage, tuple(id(g) for g in groups))
    if key not in t.costs:
        excess = [math.inf] * len(t.classes.size)
        for group in groups:
            figures = t.figures(group)
            for c, f in enumerate(figures):
                if s.zero_stage >= 3:
                    overlap = t.micro_batches * max(f.forward(mode) + f.backward(mode)
                                                    for mode in t.modes)
                else:
                    overlap = max(f.backward(mode) for mode in t.modes)
                excess[c] = min(excess[c], f.dp_sync - overlap)
        t.costs[key] = max(0.0, sum(size * e for size, e in zip(t.classes.size, excess,
                                                                  strict=True)))
    return t.costs[key] / s.pp  # type: ignore[operator]


def _least_recompute(t: ShapeTables, *, own: bool = False) -> tuple[bool, float]:
    """Whether activations can fit at all, and the least recomputation time per micro-batch
    over all layers that makes them fit (a fractional knapsack: a lower bound). Priced as
    ``_activation_trade`` prices it: by default each mode at its cheapest group's time (what
    adds to the least work of all layers), with ``own`` each mode at the least, over the
    groups, of what it costs there beyond that group's fastest mode (what adds to a layer
    taken at its own group's fastest cost wherever it runs).

    Device ``d`` holding ``in_flight[d]`` micro-batches can keep at most
    ``(its free bytes) * v / in_flight[d]`` bytes of one micro-batch's activations; summing
    over devices, with the model states placed where they cost the least, bounds what all
    layers together may keep.
    """
    per_param, fixed = t.state_bytes_per_param()
    params, held, segments = _activation_trade(t, own=own)
    states = per_param * params
    v = t.shape.virtual_stages
    room = sum((t.capacity(g) - fixed - t.buffers) * v * inverse
               for g, inverse in _inverse_in_flight(t))
    room -= states * v / max(t.in_flight)
    room += abs(room) * ROUNDING  # summed in another order than the stage model's
    extra = 0.0
    excess = held - room
    for price, saved in segments:
        if excess <= 0:
            break
        take = min(saved, excess)
        extra += take * price
        excess -= take
    return excess <= 0, extra


def _inverse_in_flight(t: ShapeTables) -> list[tuple[NodeGroup, float]]:
    """Per node group, in stage order, the sum of ``1 / in_flight[d]`` over its devices."""
    s = t.shape
    key = ("inverse in flight", s.schedule, s.pp, t.micro_batches, s.virtual_stages)
    if key not in t.costs:
        sums: dict[int, tuple[NodeGroup, float]] = {}
        for g, n in zip(t.groups, t.in_flight, strict=True):
            sums[id(g)] = (g, sums.get(id(g), (g, 0.0))[1] + 1 / n)
        t.costs[key] = list(sums.values())
    return t.costs[key]  # type: ignore[return-value]


def _activation_trade(t: ShapeTables, *, own: bool = False
                      ) -> tuple[float, float, list[tuple[float, float]]]:
    """(parameters of all layers on one device, bytes of activations all layers
    hold per micro-batch without recomputation, the (seconds per byte, bytes) segments that
    recomputation trades at increasing prices, each mode at its cheapest group's time; with
    ``own``, at the least over the groups of its time there minus that group's fastest mode's
    (a group slower without recomputation may recompute for less: its attention is faster))."""
    s = t.shape
    key = ("trade", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size,
           tuple(id(g) for g in t.distinct_groups), own)
    if key in t.costs:
        return t.costs[key]  # type: ignore[return-value]
    figures = t.base(t.groups[0])  # held bytes and parameters are the same on every group
    options = _options(t) if not own else _extra_options(t)
    params = sum(size * figures[c].params for c, size in enumerate(t.classes.size))
    # Each class: its modes as (held bytes, seconds) points; the lower convex hull of the
    # undominated ones trades bytes for time at increasing prices.
    held = 0.0
    segments: list[tuple[float, float]] = []
    for c, size in enumerate(t.classes.size):
        f = figures[c]
        points = sorted({(f.held[mode], options[c][j][0]) for j, mode in enumerate(t.modes)},
                        key=lambda x: (x[1], x[0]))
        frontier = [points[0]]  # fastest first; each next one must hold strictly less
        for point in points[1:]:
            if point[0] < frontier[-1][0]:
                frontier.append(point)
        hull: list[tuple[float, float]] = []
        for point in frontier:
            while len(hull) >= 2 and _slope(hull[-2], hull[-1]) >= _slope(hull[-1], point):
                hull.pop()
            hull.append(point)
        held += size * hull[0][0]
        segments += [(_slope(a, b), size * (a[0] - b[0]))
                     for a, b in zip(hull, hull[1:], strict=False)]
    t.costs[key] = (params, held, sorted(segments))
    return t.costs[key]  # type: ignore[return-value]


def _extra_options(t: ShapeTables) -> list[list[tuple[float, float]]]:
    """Per class, per allowed mode (``_options``' layout, work only): the least over the
    stages' node groups of its work there beyond that group's fastest mode."""
    per_group = [mode_work(t, g) for g in t.distinct_groups]
    options = []
    for c in range(len(t.classes.size)):
        works = [w[c] for w in per_group]
        options.append([(min(w[j] - min(w) for w in works), 0.0)
                        for j in range(len(t.modes))])
    return options


def _slope(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Seconds per byte saved going from point a to point b (b holds fewer bytes)."""
    return (b[1] - a[1]) / (a[0] - b[0]) if a[0] > b[0] else math.inf


def family_bound(family: list[ShapeTables]) -> tuple[float, bool, float]:
    """A lower bound for every shape of a family (its representatives differ only in sequence
    parallelism), whatever its ZeRO stage, schedule, split and recomputation."""
    bound, need, fits = math.inf, math.inf, False
    for t in family:
        work, zb_chain, optimizer = _work(t)
        bound = min(bound, max(t.micro_batches * work / _speed_share(t), zb_chain) + optimizer)
        # The first device holds the most micro-batches; it keeps at least the least
        # activations of its share of the layers.
        held = max(t.in_flight) * _least_held(t)
        for zero in {0, 2, t.shape.zero_stage}:
            if zero <= t.shape.zero_stage:
                ok, _ = _memory(t, zero, 0.0)
                fits = fits or ok
                need = min(need, _memory(t, zero, held)[1])
    return bound * (1 - ROUNDING), fits, need


def _least_held(t: ShapeTables) -> float:
    """Least activation bytes all layers hold per micro-batch, over the allowed modes."""
    s = t.shape
    group = t.groups[0]
    key = ("least held", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, id(group))
    if key not in t.costs:
        figures = t.base(group)
        t.costs[key] = sum(size * min(figures[c].held[mode] for mode in t.modes)
                           for c, size in enumerate(t.classes.size))
    return t.costs[key]  # type: ignore[return-value]


def _memory(t: ShapeTables, zero_stage: int, activations: float) -> tuple[bool, float]:
    """Whether the stages' devices can hold the model states (and ``activations`` in all) at
    ``zero_stage``, and the bytes per device that needs at least."""
    per_param, fixed = t.state_bytes_per_param(zero_stage)
    params, _, _ = _activation_trade(t)
    p = t.shape.pp
    need = params * per_param + p * (fixed + t.buffers) + activations
    return need <= _capacity(t), (need * (1 + FRAGMENTATION) + p * FRAMEWORK_BYTES) / p


def _capacity(t: ShapeTables) -> float:
    """Bytes all stages' devices may allocate together."""
    key = ("capacity", t.shape.pp)
    if key not in t.costs:
        t.costs[key] = sum(t.capacity(g) for g in t.groups)
    return t.costs[key]  # type: ignore[return-value]
