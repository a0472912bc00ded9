"""``autopar.plan``: exact under the cost model on spaces small enough to enumerate, constraints,
determinism and errors."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import pytest

import autopar
from autopar.cluster import Cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import estimate
from tests import brute_force
from tests.models import small_gpt_graph


def tight(cluster: Cluster, gib: float) -> Cluster:
    """The cluster with devices of ``gib`` GiB: memory makes splits and recomputation matter."""
    groups = [g.model_copy(update={"device": g.device.model_copy(
        update={"memory_bytes": int(gib * 2**30)})}) for g in cluster.groups]
    return cluster.model_copy(update={"groups": groups})


class SmallGPT:
    """The small GPT's layer profiles and classes, to build ``ShapeTables`` of many shapes
    (sharing one cost cache unless given another) and cost their every split."""

    def __init__(self) -> None:
        from autopar.layer_profiles import layer_profiles
        from autopar.solver.constraints import Constraints
        from autopar.solver.tables import LayerClasses

        self.graph = small_gpt_graph()
        self.n = len(self.graph.layers)
        self.profiles = layer_profiles(self.graph)
        self.classes = LayerClasses(self.graph, self.profiles)
        self.rules = Constraints.of(None)
        self.costs: dict[tuple, object] = {}

    def tables(self, shape: Any, cluster: Cluster, gbs: int,
               costs: dict[tuple, object] | None = None) -> Any:
        from autopar.solver.tables import ShapeTables

        return ShapeTables(self.graph, self.profiles, self.classes, cluster, shape, gbs, "bf16",
                           "adamw", self.rules.recompute, self.rules.memory_headroom,
                           self.costs if costs is None else costs)

    def fitting_estimates(self, shape: Any, cluster: Cluster, gbs: int,
                          patterns: list[tuple[str, ...]]
                          ) -> Iterator[tuple[tuple[int, ...], tuple[str, ...], Any]]:
        """``estimate()`` of every contiguous split of ``shape`` under each recomputation
        pattern, where it is a valid config that fits."""
        for cuts in itertools.combinations(range(1, self.n), shape.pp * shape.virtual_stages - 1):
            split = tuple(b - a for a, b in itertools.pairwise((0, *cuts, self.n)))
            for modes in patterns:
                try:
                    e = estimate(self.graph, cluster, shape.config(layers_per_stage=split,
                                                                   recompute=modes),
                                 global_batch_size=gbs)
                except ConfigError:
                    continue
                if e.fits and e.peak_memory <= e.capacity * (1 - self.rules.memory_headroom):
                    yield split, modes, e


def _fits(e: autopar.Estimate) -> bool:
    return e.fits


FULL_OR_NOT = ("none", "full")


@pytest.mark.parametrize(("schedule", "virtual_stages", "pp", "modes"), [
    ("1f1b", 1, None, FULL_OR_NOT),
    ("1f1b", 1, 4, FULL_OR_NOT),
    ("gpipe", 1, 2, FULL_OR_NOT),
    ("gpipe", 1, 4, FULL_OR_NOT),
    ("zero_bubble", 1, 2, FULL_OR_NOT),
    ("zero_bubble", 1, 4, FULL_OR_NOT),
    # The interleaved bound is loose: with recomputation too, the search costs hundreds of
    # candidates before it closes (minutes); splits alone keep the test quick.
    ("interleaved", 2, None, ("none",)),
])
def test_plan_is_the_best_split_and_recomputation_by_brute_force(
        schedule: str, virtual_stages: int, pp: int | None, modes: tuple[str, ...]) -> None:
    """Every (or the pinned) pipeline degree, contiguous split and per-layer choice of
    recomputation, costed by estimate(): the plan's step time is the least of those that
    fit, for each schedule. pp is pinned where the least would otherwise be one stage,
    which has no split to choose."""
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 2.2)
    pins: dict[str, object] = dict(tp=1, cp=1, zero_stage=0, micro_batch_size=2,
                                   schedule=schedule, recompute=modes, pp=pp)
    if virtual_stages > 1:
        pins["virtual_stages"] = virtual_stages
    plan = autopar.plan(graph, cluster, global_batch_size=16, constraints=pins)
    best = brute_force.fastest(graph, cluster, 16, pins)
    assert best is not None
    assert plan.estimate.step_time == pytest.approx(best.step_time, rel=1e-12)
    assert plan.solver.optimal and plan.solver.gap == 0


def test_stage_models_cut_into_tiny_slices_give_the_same_optimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CP-SAT solves that run out of their slice hand back (the shape goes back on the heap,
    the next visit goes elsewhere) and get twice the time on the next visit: with slices so
    small that most first solves stall, the plan is still the brute-force optimum, proven,
    and the same configuration as with the default slices. (Zero-bubble: its models are the
    ones here that a tiny slice stops.)"""
    from autopar.solver import stage_model

    schedule = "zero_bubble"
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 2.2)
    # pp pinned: without it the plan runs on one stage, and no stage model is needed.
    pins: dict[str, object] = dict(tp=1, cp=1, pp=4, zero_stage=0, micro_batch_size=2,
                                   schedule=schedule, recompute=FULL_OR_NOT)
    default = autopar.plan(graph, cluster, global_batch_size=16, constraints=pins)
    stalls = []
    solve = stage_model.StageModel.solve

    def counted(self: Any, below: float | None, limit: float | None) -> Any:
        out = solve(self, below, limit)
        stalls.append(self.stalled)
        return out

    monkeypatch.setattr(stage_model, "FIRST_SLICE", 1e-5)
    monkeypatch.setattr(stage_model.StageModel, "solve", counted)
    plan = autopar.plan(graph, cluster, global_batch_size=16, constraints=pins)
    assert sum(stalls) > 0  # the slices did stop solves
    best = brute_force.fastest(graph, cluster, 16, pins)
    assert best is not None
    assert plan.estimate.step_time == pytest.approx(best.step_time, rel=1e-12)
    assert plan.solver.optimal and plan.solver.gap == 0
    assert plan.config == default.config


def test_after_a_stalled_visit_the_shape_with_fewest_splits_goes_next() -> None:
    """``search._pop``: the least entry, unless its model stalled; then the shape below the
    limit with the fewest splits whose model did not, a shape ready to be solved before one
    that is not (a family if no shape is left), the heap kept whole."""
    import heapq
    from types import SimpleNamespace

    from autopar.solver.search import _pop

    def shape(name: str, layers: int, chunks: int) -> SimpleNamespace:
        return SimpleNamespace(signature=(name,), layer_class=[0] * layers, chunks=chunks)

    a, b, c, e, f = (shape("a", 9, 2), shape("b", 20, 4), shape("c", 9, 8), shape("e", 4, 4),
                     shape("f", 9, 8))
    entries = [(1.0, (1,), "A", a), (2.0, (1,), "B", b), (3.0, (1,), "C", c),
               (2.5, (0,), "D", None), (9.0, (1,), "E", e), (3.5, (1,), "F", f)]

    def heap() -> list:
        h = list(entries)
        heapq.heapify(h)
        return h

    def unsharpened(name: str, t: object) -> bool:  # every bound is already sharp
        return False

    h = heap()
    assert _pop(h, set(), 5.0, unsharpened)[2] == "A"
    h = heap()
    # c and f: 8 splits, against b's 969; e is past the limit.
    assert _pop(h, {("a",)}, 5.0, unsharpened)[2] == "C"
    assert sorted(x[2] for x in h) == ["A", "B", "D", "E", "F"]
    assert [heapq.heappop(h)[2] for _ in range(5)] == ["A", "B", "D", "F", "E"]
    h = heap()
    assert _pop(h, {("a",)}, 5.0, lambda name, t: name == "C")[2] == "F"  # c unsharpened
    h = heap()
    assert _pop(h, {("a",), ("b",), ("c",), ("f",)}, 5.0, unsharpened)[2] == "D"
    h = heap()
    assert _pop(h, {("a",), ("b",), ("c",), ("f",)}, 2.0, unsharpened)[2] == "A"  # none else below


def test_plan_beats_every_uniform_configuration() -> None:
    """Every uniform configuration (degrees, ZeRO, sp, schedule, virtual stages, micro-batch,
    one recomputation mode for all layers, Megatron's even split) through estimate()."""
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0)
    gbs = 16
    plan = autopar.plan(graph, cluster, global_batch_size=gbs)
    best = None
    for tp, pp, cp in itertools.product((1, 2, 4, 8), repeat=3):
        if 8 % (tp * pp * cp):
            continue
        dp = 8 // (tp * pp * cp)
        for zero, sp, schedule, v, mbs, mode in itertools.product(
                range(4), (False, True), ("gpipe", "1f1b", "interleaved", "zero_bubble"),
                (1, 2, 3), (1, 2, 4, 8, 16), ("none", "selective", "full")):
            try:
                config = ParallelConfig(dp=dp, tp=tp, pp=pp, cp=cp, zero_stage=zero,
                                        sequence_parallel=sp, schedule=schedule,
                                        virtual_stages=v, micro_batch_size=mbs, recompute=mode)
                e = estimate(graph, cluster, config, global_batch_size=gbs)
            except ConfigError:
                continue
            if e.fits and (best is None or e.step_time < best):
                best = e.step_time
    assert best is not None
    assert plan.estimate.step_time <= best * (1 + 1e-12)


def test_stored_estimate_is_estimate_of_the_plan_config() -> None:
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 2.5)
    plan = autopar.plan(graph, cluster, global_batch_size=32)
    again = estimate(graph, cluster, plan.config, global_batch_size=32)
    assert again.model_dump_json() == plan.estimate.model_dump_json()
    for runner in plan.runners_up:
        assert runner.estimate.step_time >= plan.estimate.step_time


def test_same_inputs_same_bytes(tmp_path) -> None:  # noqa: ANN001
    graph = small_gpt_graph()
    cluster = Cluster.from_profile("dgx-a100", nodes=2)
    a = autopar.plan(graph, cluster, global_batch_size=64)
    b = autopar.plan(graph, cluster, global_batch_size=64)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert autopar.Plan.load(tmp_path / "a.json").to_json() == a.to_json()


def test_pins_are_obeyed() -> None:
    graph = small_gpt_graph()
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    plan = autopar.plan(graph, cluster, global_batch_size=32,
                        constraints={"tp": 2, "schedule": "gpipe", "pp": 2})
    assert (plan.config.tp, plan.config.pp, plan.config.schedule) == (2, 2, "gpipe")
    capped = autopar.plan(graph, cluster, global_batch_size=32,
                          constraints=autopar.Constraints(max_tp=1, micro_batch_size=1))
    assert capped.config.tp == 1 and capped.config.micro_batch_size == 1


def test_pins_keep_the_configurations_where_they_change_nothing() -> None:
    """ZeRO without data parallelism and a schedule without pipelining cost what no ZeRO and
    1F1B do, and such configurations are valid: a pin on them keeps them (named as pinned),
    as a search of every valid configuration that obeys the pins would. Here the batch leaves
    one replica (dp = 1) and ZeRO-3 is pinned: the plan is the least of every tp x pp,
    schedule and split at dp = 1, costed by estimate()."""
    graph = small_gpt_graph()
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    pins = dict(zero_stage=3, cp=1, micro_batch_size=2, recompute=("none",))
    plan = autopar.plan(graph, cluster, global_batch_size=2, constraints=pins)
    assert (plan.config.dp, plan.config.zero_stage) == (1, 3)
    best = brute_force.fastest(graph, cluster, 2, pins)
    assert best is not None
    assert plan.estimate.step_time == pytest.approx(best.step_time, rel=1e-12)
    unpinned = autopar.plan(graph, cluster, global_batch_size=2,
                            constraints=dict(pins, zero_stage=None))
    assert unpinned.estimate.step_time == plan.estimate.step_time
    # One stage under a pinned GPipe is the plain step: the same time and memory.
    gpipe = autopar.plan(graph, cluster, global_batch_size=16,
                         constraints=dict(pp=1, schedule="gpipe"))
    plain = autopar.plan(graph, cluster, global_batch_size=16, constraints=dict(pp=1))
    assert gpipe.config.schedule == "gpipe"
    assert (gpipe.estimate.step_time, gpipe.estimate.peak_memory) == (
        plain.estimate.step_time, plain.estimate.peak_memory)


def test_the_time_limit_counts_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time_limit_s`` is the whole call's: the search gets what tracing left of it."""
    import time

    import torch

    from autopar import planner
    from autopar.solver import search as search_module
    from tests.models import mlp

    given: list[float] = []
    search, trace = search_module.search, planner.trace

    def spy(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs["time_limit_s"])
        return search(*args, **kwargs)

    def slow_trace(*args: Any) -> Any:
        time.sleep(0.3)
        return trace(*args)

    monkeypatch.setattr(search_module, "search", spy)
    monkeypatch.setattr(planner, "trace", slow_trace)
    autopar.plan(mlp(), Cluster.from_profile("dgx-a100", nodes=1),
                 example_inputs=(torch.zeros(64, 32),), global_batch_size=64, time_limit_s=30)
    assert len(given) == 1 and given[0] <= 30 - 0.3


def test_headroom_is_kept() -> None:
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0)
    plan = autopar.plan(graph, cluster, global_batch_size=16,
                        constraints={"memory_headroom": 0.3})
    assert plan.estimate.peak_memory <= 0.7 * plan.estimate.capacity


def test_nothing_fits_says_what_is_needed_and_what_would_help() -> None:
    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 1.01)
    with pytest.raises(autopar.InfeasibleError) as err:
        autopar.plan(graph, cluster, global_batch_size=16,
                     constraints={"zero_stage": 0, "tp": 1, "cp": 1, "micro_batch_size": 1,
                                  "schedule": "1f1b"})
    message = str(err.value)
    assert "GiB per device" in message and "more devices" in message
    assert "ZeRO-3" in message


def test_heterogeneous_cluster_places_stages_on_groups() -> None:
    a100 = Cluster.from_profile("dgx-a100", nodes=1).groups[0]
    h100 = Cluster.from_profile("dgx-h100", nodes=1).groups[0]
    cluster = Cluster(name="mixed", groups=[a100, h100])
    graph = small_gpt_graph(layers=6)
    plan = autopar.plan(graph, cluster, global_batch_size=32,
                        constraints={"pp": 2, "tp": 1, "cp": 1, "schedule": "1f1b"})
    again = estimate(graph, cluster, plan.config, global_batch_size=32)
    assert again.step_time == plan.estimate.step_time
    # The H100 stage (second) is faster, so it takes at least as many layers.
    split = plan.config.layers_per_stage
    assert split is not None and split[1] >= split[0]


def test_bad_constraints_are_refused() -> None:
    with pytest.raises(autopar.ConstraintError, match="tp"):
        autopar.Constraints(tp=0)
    with pytest.raises(autopar.ConstraintError, match="virtual_stages"):
        autopar.Constraints(virtual_stages=2, schedule="1f1b")
    with pytest.raises(autopar.ConstraintError, match="interleaving needs 2 chunks"):
        autopar.Constraints(virtual_stages=1, schedule="interleaved")
    for interleaving in (dict(schedule="interleaved"), dict(virtual_stages=2)):
        with pytest.raises(autopar.ConstraintError, match="needs 2 pipeline stages"):
            autopar.Constraints(pp=1, **interleaving)
    with pytest.raises(ConfigError, match="global_batch_size"):
        autopar.plan(small_gpt_graph(), Cluster.from_profile("dgx-a100", nodes=1),
                     global_batch_size=0)


def test_critical_path_is_the_simulated_step_for_fixed_orders() -> None:
    """The stage model's cuts: the longest path of a schedule's graph is exactly what
    ``simulate`` returns for fixed-order schedules, and no more than it for zero-bubble (whose
    weight gradients the graph leaves out); its counts reproduce its length."""
    import random

    from autopar.cost_models.pipeline import StageCost, simulate

    from autopar.solver.paths import critical_path

    rng = random.Random(0)
    for _ in range(150):
        schedule = rng.choice(["gpipe", "1f1b", "interleaved", "zero_bubble"])
        p = rng.randint(1, 5)
        v = rng.randint(2, 3) if schedule == "interleaved" else 1
        m = p * rng.randint(1, 3) if schedule == "interleaved" else rng.randint(1, 9)
        k = p * v
        f = [rng.randint(1, 1000) for _ in range(k)]
        b = [2 * rng.randint(1, 1000) for _ in range(k)]
        s = [rng.randint(0, 300) for _ in range(k)]
        step = simulate([StageCost(f[i], b[i], send=s[i]) for i in range(k)], m, schedule,
                        v).step_time
        back = [x // 2 for x in b] if schedule == "zero_bubble" else b
        length, path = critical_path(schedule, p, m, v, f, back, s)
        assert length == sum(path.forwards[i] * f[i] + path.backwards[i] * back[i]
                             + path.sends[i] * s[i] for i in range(k))
        if schedule == "zero_bubble":
            assert length <= step
        else:
            assert length == step


def test_peak_in_flight_closed_form_matches_the_orders() -> None:
    from autopar.cost_models.pipeline import (
        SCHEDULES,
        _orders,
        _peak_activations,
        peak_in_flight,
    )

    for schedule in SCHEDULES:
        for p in range(1, 7):
            for m in range(1, 20):
                for v in range(1, 4) if schedule == "interleaved" else (1,):
                    if v > 1 and m % p:
                        continue
                    expected = tuple(_peak_activations(o) for o in _orders(schedule, p, m, v))
                    assert peak_in_flight(schedule, p, m, v) == expected


@pytest.mark.parametrize("zero", [0, 2])
def test_stage_model_keeps_splits_whose_sync_outlasts_all_compute(zero: int) -> None:
    """On a slow network a device's sync, and the sends, can take longer than all the model's
    compute (the stage model's horizon, once the upper bound of its sync and pipeline
    terms): the model dropped those splits and, where that was all of them, reported the
    shape proven empty (T5-large on 32 AWS p4d nodes, ZeRO-2, pp 2). Its first candidate's
    bound is at most the least ``estimate()`` over every split (either bound put back fails
    this)."""
    from autopar.solver.space import Shape
    from autopar.solver.stage_model import StageModel

    gpt = SmallGPT()
    cluster = Cluster.from_profile("dgx-a100", nodes=4)
    slow = cluster.groups[0].inter_node.model_copy(update={
        "bandwidth": 2.5e7, "allreduce_busbw": 2.4e7})
    cluster = cluster.model_copy(update={"groups": [
        cluster.groups[0].model_copy(update={"inter_node": slow})]})
    shape = Shape(1, 2, 1, 16, zero, False, "1f1b", 1, 1)
    t = gpt.tables(shape, cluster, 16)
    least = min(e.step_time for _, _, e in gpt.fitting_estimates(shape, cluster, 16,
                                                                  [("none",) * gpt.n]))
    figures = t.figures(t.groups[0])
    horizon = t.micro_batches * sum(n * (f.forward("full") + f.backward("full"))
                                    for n, f in zip(t.classes.size, figures, strict=True))
    assert least > 3 * horizon  # the sync dwarfs the compute
    candidate, _ = StageModel(t).solve(None, None)
    assert candidate is not None and candidate.bound <= least


def test_shape_bounds_never_exceed_any_split_that_fits() -> None:
    """``shape_bound`` (work, whole layers on the busiest device, interleaved sends, ZeRO-3
    sync, fill) against ``estimate()`` of every contiguous split, under uniform and random
    per-layer recomputation, for sampled shapes of a small GPT on a tight node."""
    import random

    from autopar.solver.bounds import shape_bound
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    n = gpt.n
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0)
    gbs = 16
    rng = random.Random(7)
    checked = 0
    for tp, pp, zero, schedule, v, mbs in itertools.product(
            (1, 2), (2, 4), (1, 3), ("gpipe", "1f1b", "interleaved", "zero_bubble"), (1, 2),
            (1, 2)):
        if (schedule == "interleaved") != (v > 1):
            continue
        dp = 8 // (tp * pp)
        shape = Shape(tp, pp, 1, dp, zero, tp > 1, schedule, v, mbs)
        bound, _ = shape_bound(gpt.tables(shape, cluster, gbs))
        patterns = [(m,) * n for m in ("none", "selective", "full")]
        patterns += [tuple(rng.choice(("none", "selective", "full")) for _ in range(n))
                     for _ in range(4)]
        for split, modes, e in gpt.fitting_estimates(shape, cluster, gbs, patterns):
            assert bound <= e.step_time, (shape, split, modes, bound, e.step_time)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("kind", ["one group", "A100 + H100"])
def test_whole_layer_fill_never_exceeds_any_split(kind: str) -> None:
    """``shape_bound(bubble=True)`` for one stage per device (the whole-layer fill of
    ``_whole_layer_fill``) against ``estimate()`` of every contiguous split under uniform and
    random recomputation, GPipe, 1F1B and zero-bubble at pp 2 to 8 (8 stages of the small
    GPT's 8 layers: one each, the case it is for); it is above the plain bound somewhere, and
    ×1.05 it would exceed some split."""
    import random

    from autopar.solver.bounds import has_bubble_bound, shape_bound
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    n = gpt.n
    rng = random.Random(11)
    checked, raised, closest = 0, 0, math.inf
    for order in (("one",) if kind == "one group" else ("ah", "ha")):
        cluster = (tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0) if order == "one"
                   else _mixed(order, 3.0))
        devices = cluster.world_size
        costs: dict[tuple, object] = {}
        for tp, pp, zero, schedule, mbs in itertools.product(
                (1, 2), (2, 4, 8), (1, 3), ("gpipe", "1f1b", "zero_bubble"), (1, 2)):
            dp = devices // (tp * pp)
            if dp < 1 or 16 % (dp * mbs):
                continue
            shape = Shape(tp, pp, 1, dp, zero, tp > 1, schedule, 1, mbs)
            tables = gpt.tables(shape, cluster, 16, costs)
            assert has_bubble_bound(tables)
            plain, _ = shape_bound(tables)
            bound, _ = shape_bound(tables, bubble=True)
            raised += bound > plain
            patterns = [(m,) * n for m in ("none", "selective", "full")]
            patterns += [tuple(rng.choice(("none", "selective", "full")) for _ in range(n))
                         for _ in range(3)]
            for split, modes, e in gpt.fitting_estimates(shape, cluster, 16, patterns):
                assert bound <= e.step_time, (order, shape, split, modes, bound, e.step_time)
                closest = min(closest, e.step_time / bound)
                checked += 1
    assert checked > 300 and raised > 0
    assert closest < 1.05


def test_interleaved_sends_bound_the_simulated_step() -> None:
    """The interleaved schedule's step is at least m/p of all the work plus
    ``interleaved_sends`` least sends, whatever the chunks cost (random cases)."""
    import random

    from autopar.cost_models.pipeline import StageCost, simulate

    from autopar.solver.bounds import interleaved_sends

    rng = random.Random(1)
    for _ in range(1000):
        p, v = rng.randint(2, 6), rng.randint(2, 4)
        m = p * rng.randint(1, 4)
        least = rng.random()
        stages = [StageCost(rng.random() * rng.choice((0, 1, 3)),
                            rng.random() * rng.choice((0, 1, 3)),
                            send=least + rng.choice((0.0, 0.0, 0.2 * rng.random())))
                  for _ in range(p * v)]
        work = sum(s.forward + s.backward for s in stages)
        step = simulate(stages, m, "interleaved", v).step_time
        assert m * work / p + interleaved_sends(p, v, m) * least <= step * (1 + 1e-12)
        if all(s.forward == s.backward == 0 for s in stages):  # sends alone: the bound's
            assert interleaved_sends(p, v, m) * least <= step  # factor is what they cost


def _mixed(order: str, gib: float = 80.0) -> Cluster:
    """Two DGX-A100 and two DGX-H100 nodes (in ``order``: "ah" or "ha"), data parallelism
    across nodes: the groups differ in compute and in network, so the sync a stage exposes
    depends on where it runs."""
    a100 = Cluster.from_profile("dgx-a100", nodes=2).groups[0]
    h100 = Cluster.from_profile("dgx-h100", nodes=2).groups[0]
    return tight(Cluster(name="mixed", groups=[a100, h100] if order == "ah" else [h100, a100]),
                 gib)


@pytest.mark.parametrize("order", ["ah", "ha"])
def test_dp_exposure_bound_holds_on_a_heterogeneous_cluster(order: str) -> None:
    """``_least_dp_exposed`` never exceeds the dp sync ``estimate()`` exposes, nor the shape
    bound the step time, for every split and uniform recomputation of sampled shapes (every
    ZeRO stage, several dp degrees) on a cluster of two node groups. Taking the first stage's
    group for every device failed this (A100 group first: its slower network exposes more
    than the H100 stages do)."""
    from autopar.solver.bounds import _least_dp_exposed, _work, shape_bound
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    graph, n = gpt.graph, gpt.n
    cluster = _mixed(order)
    checked = exposed = 0
    for tp, pp, zero, mbs, gbs in itertools.product((1, 2), (2, 4), range(4), (1, 2),
                                                    (32, 128)):
        dp = 32 // (tp * pp)
        shape = Shape(tp, pp, 1, dp, zero, False, "1f1b", 1, mbs)
        tables = gpt.tables(shape, cluster, gbs)
        dp_bound = _least_dp_exposed(tables, _work(tables)[0])
        bound, _ = shape_bound(tables)
        for cuts in itertools.combinations(range(1, n), pp - 1):
            split = tuple(b - a for a, b in itertools.pairwise((0, *cuts, n)))
            for mode in ("none", "selective", "full"):
                e = estimate(graph, cluster, shape.config(layers_per_stage=split,
                                                          recompute=mode),
                             global_batch_size=gbs)
                assert dp_bound <= e.breakdown["dp_comm"] * (1 + 1e-12), (shape, split, mode)
                assert bound <= e.step_time, (shape, split, mode, bound, e.step_time)
                checked += 1
                exposed += e.breakdown["dp_comm"] > 0
    assert checked > 4000 and exposed > 1000


def _two_group_lp(tables: Any) -> float:
    """The fractional split of the layers between the two groups, solved as an LP by GLOP:
    least T with each group's load at most its stages x T."""
    from ortools.linear_solver import pywraplp

    groups = tables.distinct_groups
    solver = pywraplp.Solver.CreateSolver("GLOP")
    top = solver.NumVar(0.0, solver.infinity(), "T")
    on_a = [solver.NumVar(0.0, size, f"a{c}") for c, size in enumerate(tables.classes.size)]
    for g, group in enumerate(groups):
        cost = [min(f.forward(mode) + f.backward(mode) for mode in tables.modes)
                for f in tables.base(group)]
        share = [x if g == 0 else size - x
                 for x, size in zip(on_a, tables.classes.size, strict=True)]
        stages = sum(1 for s in tables.groups if s is group)
        solver.Add(sum(w * x for w, x in zip(cost, share, strict=True)) <= stages * top)
    solver.Minimize(top)
    assert solver.Solve() == pywraplp.Solver.OPTIMAL
    return top.solution_value()


@pytest.mark.parametrize(("order", "gib"), [("ah", 80.0), ("ha", 80.0), ("ha", 1.15)])
def test_busiest_device_bound_of_two_groups_never_exceeds_any_split(order: str,
                                                                     gib: float) -> None:
    """``_least_busiest_of_two`` (layers split between the two groups in fractions, each at its
    own A/B cost ratio, plus the least recomputation the activations need) is at most the
    busiest device's work per micro-batch ``estimate()`` gives every contiguous split that
    fits under uniform and random per-layer recomputation, for every schedule; m times it is
    at most the step time; it is tight enough that x1.3 would fail; on small devices
    recomputation counts."""
    import random

    from autopar.solver.bounds import _least_busiest_of_two, _least_recompute
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    n = gpt.n
    cluster = _mixed(order, gib)
    rng = random.Random(3)
    closest = math.inf
    recomputing = 0
    for tp, pp, mbs, (schedule, v) in itertools.product(
            (1, 2), (2, 4), (1, 8), (("1f1b", 1), ("zero_bubble", 1), ("interleaved", 2))):
        gbs = 256
        shape = Shape(tp, pp, 1, 32 // (tp * pp), 1, False, schedule, v, mbs)
        tables = gpt.tables(shape, cluster, gbs)
        assert _least_busiest_of_two(tables) == pytest.approx(_two_group_lp(tables), rel=1e-6)
        _, recompute = _least_recompute(tables, own=True)
        bound = _least_busiest_of_two(tables, recompute)
        recomputing += recompute > 0
        m = tables.micro_batches
        patterns = [(mode,) * n for mode in ("none", "selective", "full")]
        patterns += [tuple(rng.choice(("none", "selective", "full")) for _ in range(n))
                     for _ in range(6)]
        for split, modes, e in gpt.fitting_estimates(shape, cluster, gbs, patterns):
            busiest = max(e.stage_times) / m
            assert bound <= busiest * (1 + 1e-12), (shape, split, modes)
            assert m * bound <= e.step_time * (1 + 1e-12), (shape, split, modes)
            closest = min(closest, busiest / bound)
    assert closest < 1.3
    assert recomputing > 0 or gib > 8


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_plan_is_the_optimum_on_a_heterogeneous_cluster(zero: int) -> None:
    """On two node groups, every tp x pp (so dp 2 to 16), schedule, micro-batch size and
    contiguous split at one ZeRO stage, costed by estimate(): the plan's step time is the
    least of those that fit (at ZeRO-2/3 the best of them exposes dp sync)."""
    graph = small_gpt_graph()
    pins = dict(cp=1, max_tp=2, zero_stage=zero, sequence_parallel=False, recompute=("none",),
                virtual_stages=1)
    for order in ("ah", "ha"):
        cluster = _mixed(order)
        best = brute_force.fastest(graph, cluster, 16, pins)
        plan = autopar.plan(graph, cluster, global_batch_size=16, constraints=pins)
        assert best is not None
        assert plan.estimate.step_time == pytest.approx(best.step_time, rel=1e-12), order
        assert plan.solver.optimal


@pytest.mark.parametrize("kind", ["one group", "A100 + H100"])
def test_interleaved_bubble_bound_never_exceeds_any_split(kind: str) -> None:
    """``shape_bound(bubble=True)`` (the weighted-paths certificate of ``bubble.py``; on two
    node groups, weights the LP picks for the groups' own costs) against ``estimate()`` of
    every contiguous split of sampled interleaved shapes of the small GPT, under uniform and
    random per-layer recomputation that fits. It is tight enough that the bound inflated by
    1.3 would fail."""
    import random

    from autopar.solver.bounds import shape_bound
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    n = gpt.n
    cluster = (tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0) if kind == "one group"
               else _mixed("ha", 3.0))
    rng = random.Random(11)
    checked, closest, raised = 0, 0.0, 0
    for tp, pp, v, zero, mbs, rounds in itertools.product((1, 2), (2, 4), (2, 3, 4), (1, 3),
                                                         (1, 2), (1, 2, 4)):
        if pp * v > n:
            continue
        dp = cluster.world_size // (tp * pp)
        gbs = dp * mbs * pp * rounds
        shape = Shape(tp, pp, 1, dp, zero, tp > 1, "interleaved", v, mbs)
        tables = gpt.tables(shape, cluster, gbs, costs={})
        bound, _ = shape_bound(tables, bubble=True)
        raised += bound > shape_bound(tables)[0]
        patterns = [(m,) * n for m in ("none", "selective", "full")]
        patterns += [tuple(rng.choice(("none", "selective", "full")) for _ in range(n))
                     for _ in range(2)]
        for split, modes, e in gpt.fitting_estimates(shape, cluster, gbs, patterns):
            assert bound <= e.step_time, (shape, split, modes, bound, e.step_time)
            closest = max(closest, bound / e.step_time)
            checked += 1
    assert checked > 1000 and raised > 10
    assert closest * 1.3 > 1


def test_interleaved_bubble_fits_its_weights_only_while_they_can_matter() -> None:
    """With ``enough`` (the step time that prunes the shape) at or below the bound without
    fitted weights, ``shape_bound(bubble=True)`` skips the fitting and returns that weaker,
    still valid bound; asked again with ``enough`` above it, it fits, and returns what a
    fresh full computation gives, to the bit; the fitted figures then stand."""
    from autopar.solver.bounds import shape_bound
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 3.0)
    raised = 0
    for pp, v, zero, mbs in itertools.product((2, 4), (2, 4), (1, 3), (1, 2)):
        if pp * v != gpt.n:
            continue  # one layer per chunk: where the weights are fitted
        dp = cluster.world_size // pp
        gbs = dp * mbs * pp * 2
        shape = Shape(1, pp, 1, dp, zero, False, "interleaved", v, mbs)
        full, _ = shape_bound(gpt.tables(shape, cluster, gbs, costs={}), bubble=True)
        tables = gpt.tables(shape, cluster, gbs, costs={})
        skipped, _ = shape_bound(tables, bubble=True, enough=0.0)
        assert skipped <= full
        assert shape_bound(tables, bubble=True, enough=math.inf)[0] == full
        assert shape_bound(tables, bubble=True, enough=0.0)[0] == full
        raised += full > skipped
    assert raised > 0


def test_bubble_certificate_bounds_the_simulated_step() -> None:
    """Every weighted-paths certificate (the LP's, and random weights) is at most the
    simulated interleaved step, whatever the chunks and sends cost (random cases)."""
    import random

    from autopar.cost_models.pipeline import StageCost, simulate

    from autopar.solver.bubble import certificate, evaluate

    rng = random.Random(2)
    for trial in range(600):
        p, v = rng.randint(2, 6), rng.randint(2, 4)
        m = p * rng.randint(1, 4)
        if trial % 2:
            cert = certificate(p, v, m)
        else:
            cert = evaluate(p, v, m, [rng.random() for _ in range(p)],
                            [[rng.random() for _ in range(v)] for _ in range(p)],
                            [[rng.random() for _ in range(v)] for _ in range(p)])
        least = rng.random() * 0.3
        stages = [StageCost(rng.random() * rng.choice((0, 1, 3)),
                            rng.random() * rng.choice((0, 1, 3)),
                            send=least + rng.choice((0.0, 0.2 * rng.random())))
                  for _ in range(p * v)]
        bound = sum(cert.alpha[k] * s.forward + cert.beta[k] * s.backward
                    for k, s in enumerate(stages)) + cert.sends * least
        assert bound <= simulate(stages, m, "interleaved", v).step_time * (1 + 1e-12)


def test_contiguous_weighted_paths_and_weights_fitted_to_splits() -> None:
    """``Certificate.contiguous`` is the least weighted cost over every split of the layers
    into chunks of one layer at least (brute force), attained by the split it returns;
    ``fitted_to_splits`` never bounds below its start, never above the least simulated step
    of any split (so it is valid), and bounds more somewhere where chunks hold one layer."""
    import random

    from autopar.cost_models.pipeline import StageCost, simulate

    from autopar.solver.bubble import certificate, evaluate, fitted_to_splits

    rng = random.Random(4)
    gained = 0
    for trial in range(120):
        p, v = rng.choice(((2, 2), (2, 3), (3, 2), (4, 2)))
        k_chunks = p * v
        n = k_chunks + rng.randint(0, 2)
        m = p * rng.randint(1, 3)
        classes = rng.randint(1, 3)
        layer_class = [rng.randrange(classes) for _ in range(n)]
        modes = [[(rng.uniform(0.2, 1), rng.uniform(0.4, 2)) for _ in range(2)]
                 for _ in range(classes)]
        # Chunks on devices of unlike speed (every other trial), some with one mode only.
        speed = [1.0 if trial % 4 < 2 else rng.choice((1.0, 1.7)) for _ in range(p)]
        costs = [[[(f * speed[k % p], b * speed[k % p])
                   for f, b in modes[c][:rng.choice((1, 2))]] for k in range(k_chunks)]
                 for c in range(classes)]
        send = rng.uniform(0, 0.05)
        splits = [tuple(b - a for a, b in itertools.pairwise((0, *cuts, n)))
                  for cuts in itertools.combinations(range(1, n), k_chunks - 1)]
        if trial % 2:
            cert = evaluate(p, v, m, [rng.random() for _ in range(p)],
                            [[rng.random() for _ in range(v)] for _ in range(p)],
                            [[rng.random() for _ in range(v)] for _ in range(p)])
        else:
            cert = certificate(p, v, m)

        def weighted(split: tuple[int, ...], cert: Any = cert,
                     layer_class: list[int] = layer_class, costs: Any = costs) -> float:
            total, first = 0.0, 0
            for k, size in enumerate(split):
                total += sum(min(cert.alpha[k] * f + cert.beta[k] * b for f, b in costs[c][k])
                             for c in layer_class[first:first + size])
                first += size
            return total

        least, _, split = cert.contiguous(costs, layer_class)
        assert least == pytest.approx(min(map(weighted, splits)), rel=1e-12)
        assert weighted(split) == pytest.approx(least, rel=1e-12)

        start = certificate(p, v, m)
        fitted = fitted_to_splits(p, v, m, costs, layer_class, send, start)
        before = start.contiguous(costs, layer_class)[0] + start.sends * send
        after = fitted.contiguous(costs, layer_class)[0] + fitted.sends * send
        steps = []
        for split in splits:
            stages, first = [], 0
            for k, size in enumerate(split):
                fastest = [min(costs[c][k], key=sum) for c in layer_class[first:first + size]]
                stages.append(StageCost(sum(f for f, _ in fastest), sum(b for _, b in fastest),
                                        send=send))
                first += size
            steps.append(simulate(stages, m, "interleaved", v).step_time)
        assert before * (1 - 1e-12) <= after <= min(steps) * (1 + 1e-12)
        gained += after > before * (1 + 1e-6)
    assert gained > 0


def test_interleaved_paths_bound_the_simulated_step() -> None:
    """The paths ``L(d, r, c)`` the stage model starts from never exceed the simulated
    interleaved step (nor the critical path), whatever the chunks and sends cost; they are
    tight in some cases, and ×1.3 they would fail."""
    import random

    from autopar.cost_models.pipeline import StageCost, simulate

    from autopar.solver.paths import critical_path, interleaved_paths

    rng = random.Random(3)
    tight = inflated_fails = 0
    for _ in range(800):
        p, v = rng.choice((2, 2, 3, 4)), rng.randint(2, 5)
        m = p * rng.randint(1, 4)
        k = p * v
        f = [rng.randint(1, 1000) * rng.choice((0, 1, 3)) for _ in range(k)]
        b = [rng.randint(1, 2000) * rng.choice((0, 1, 3)) for _ in range(k)]
        s = [rng.randint(0, 300) for _ in range(k - 1)] + [0]
        bound = interleaved_paths(p, v, m, f, b, s)
        step = simulate([StageCost(f[i], b[i], send=s[i]) for i in range(k)], m,
                        "interleaved", v).step_time
        assert bound <= critical_path("interleaved", p, m, v, f, b, s)[0] == step
        tight += bound == step
        inflated_fails += bound * 1.3 > step
    assert tight > 0 and inflated_fails > 0


def test_pp2_split_search_is_exact_and_its_bounds_never_exceed_any_split() -> None:
    """``pp2.SplitSearch`` on two-device interleaved shapes of the small GPT: its best split
    is the least ``estimate()`` over every contiguous split (no recomputation, where that
    fits and exposes no sync); its value of a split never exceeds ``estimate()`` of that
    split under uniform or random recomputation; every node bound on the way to a split
    never exceeds the split's value (and the bound inflated by 1.3 would fail)."""
    import random

    from autopar.solver import pp2
    from autopar.solver.space import Shape

    gpt = SmallGPT()
    graph, n, rules = gpt.graph, gpt.n, gpt.rules
    rng = random.Random(5)
    checked, exact, closest = 0, 0, 0.0
    for gib, tp, v, zero, mbs, rounds in itertools.product((3.0, 80.0), (1, 2), (2, 3),
                                                          (1, 3), (1, 2), (1, 2, 4)):
        if 2 * v > n:
            continue
        cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), gib)
        dp = 8 // (tp * 2)
        gbs = dp * mbs * 2 * rounds
        shape = Shape(tp, 2, 1, dp, zero, tp > 1, "interleaved", v, mbs)
        tables = gpt.tables(shape, cluster, gbs, costs={})  # a cache per device size
        assert pp2.applies(tables)
        search = pp2.SplitSearch(tables)
        found = []
        while True:
            candidate, proven = search.solve(None, None)
            if candidate is not None:
                found.append(candidate)
            if proven and candidate is None:
                break
        least, least_none = math.inf, math.inf
        for cuts in itertools.combinations(range(1, n), 2 * v - 1):
            split = tuple(b - a for a, b in itertools.pairwise((0, *cuts, n)))
            value = search._value(split)
            least = min(least, value)
            for along in search.bounds_along(split):
                assert along <= value * (1 + 1e-12), (shape, split, along, value)
                closest = max(closest, along / value)
            patterns = [(m,) * n for m in ("none", "selective", "full")]
            patterns += [tuple(rng.choice(("none", "selective", "full")) for _ in range(n))]
            for modes in patterns:
                e = estimate(graph, cluster, shape.config(layers_per_stage=split,
                                                          recompute=modes),
                             global_batch_size=gbs)
                assert value <= e.step_time * (1 + 1e-12), (shape, split, modes)
                checked += 1
                if modes[0] == "none" and len(set(modes)) == 1 and e.fits and \
                        e.peak_memory <= e.capacity * (1 - rules.memory_headroom):
                    least_none = min(least_none, e.step_time)
        best = found[-1]
        assert best.bound == pytest.approx(least, rel=1e-12)
        assert search.last_bound <= least
        if least_none == pytest.approx(least, rel=1e-12):
            exact += 1  # the least value is attained without recomputation: the optimum
    assert checked > 1000 and exact > 10
    assert closest * 1.3 > 1


def test_path_weights_survive_near_equal_path_lengths(capfd: pytest.CaptureFixture) -> None:
    """Path lengths from a real search where GLOP, given them raw, failed: the weights are
    still the LP's optimum (as OR-Tools' PDLP solves it, independently), not the uniform
    fallback, and nothing is printed."""
    import json
    from pathlib import Path

    import numpy as np
    from ortools.linear_solver import pywraplp

    from autopar.solver.pp2 import path_weights

    data = Path(__file__).parent / "data" / "near_equal_path_lengths.json"
    lengths = np.array(json.loads(data.read_text())["lengths"])
    weights = path_weights(lengths)
    assert weights.min() >= 0 and weights.sum() == pytest.approx(1, abs=1e-12)

    solver = pywraplp.Solver.CreateSolver("PDLP")
    w = [solver.NumVar(0.0, 1.0, "") for _ in range(lengths.shape[1])]
    z = solver.NumVar(-solver.infinity(), solver.infinity(), "z")
    solver.Add(sum(w) == 1)
    for row in lengths:
        solver.Add(z <= sum(a * float(x) for a, x in zip(w, row, strict=True)))
    solver.Maximize(z)
    assert solver.Solve() == pywraplp.Solver.OPTIMAL
    uniform = (lengths.mean(axis=1)).min()
    assert (lengths @ weights).min() == pytest.approx(z.solution_value(), rel=1e-7)
    assert z.solution_value() > uniform + 1
    assert "ABNORMAL" not in capfd.readouterr().err


def test_twin_shapes_share_one_model_and_lose_no_split() -> None:
    """Shapes that trade context parallelism for micro-batch size keep every per-device
    figure, so they share one model (``twins.py``); the plan is still the least, over every
    such shape and every split, of what ``estimate`` gives (costed here one by one)."""
    from autopar.solver.constraints import Constraints
    from autopar.solver.search import search

    graph = small_gpt_graph()
    cluster = tight(Cluster.from_profile("dgx-a100", nodes=1), 2.2)
    gbs = 16
    pins = Constraints(tp=1, pp=2, zero_stage=1, schedule="1f1b", recompute=("none",))
    result = search(graph, cluster, global_batch_size=gbs, precision="bf16", optimizer="adamw",
                    constraints=pins, time_limit_s=None)
    assert result.best is not None and result.stats.optimal
    assert result.stats.models < result.stats.solved  # twins met and shared a model
    n = len(graph.layers)
    best: tuple | None = None  # the search's order: time, then memory, then the config
    for cp, mbs in itertools.product((1, 2, 4), (1, 2, 4, 8)):
        for cut in range(1, n):
            try:
                config = ParallelConfig(dp=4 // cp, pp=2, cp=cp, zero_stage=1,
                                        micro_batch_size=mbs, schedule="1f1b",
                                        layers_per_stage=(cut, n - cut), recompute="none")
                e = estimate(graph, cluster, config, global_batch_size=gbs)
            except ConfigError:
                continue
            key = (e.step_time, e.peak_memory, config.model_dump_json())
            if e.fits and (best is None or key < best):
                best = key
    assert best is not None
    found = result.best
    assert (found.estimate.step_time, found.estimate.peak_memory) == best[:2]
    # Twins tie; the one the search returns must still be the first in its order, so every
    # twin, also one that joined the model late, must have had the split costed.
    assert found.config.model_dump_json() == best[2]


def test_certificate_for_costs_is_the_best_weighting() -> None:
    """``bubble.certificate_for`` maximises the bound for the costs it is given: on random
    chunk costs of two alternating groups, its bound (weighted costs plus sends) is never
    below that of the weights tuned for like chunks nor of random weights, and above the
    former somewhere."""
    import random

    from autopar.solver.bubble import certificate, certificate_for, evaluate

    rng = random.Random(5)
    better = 0
    for p, v, rounds in itertools.product((2, 4), (2, 3), (1, 2)):
        m = p * rounds
        speed = [1.0, rng.uniform(1.5, 3.0)]  # group of chunk k: k % p % 2
        sizes = [rng.randint(1, 4) for _ in range(3)]
        base = [(rng.uniform(1, 2), rng.uniform(2, 4)) for _ in sizes]
        costs = [[[(f * speed[k % p % 2], b * speed[k % p % 2]),
                   (2 * f * speed[k % p % 2], 2 * b * speed[k % p % 2])]
                  for k in range(p * v)] for f, b in base]
        send = rng.uniform(0, 0.5)

        def bound(cert: Any, costs: Any = costs, sizes: Any = sizes,
                  send: float = send) -> float:
            # What the LP maximises: each layer in its cheapest chunk, plus the sends.
            per_chunk, _ = cert._per_chunk(costs)
            return float(sum(n * min(row) for n, row in zip(sizes, per_chunk, strict=True))
                         + cert.sends * send)

        best = bound(certificate_for(p, v, m, costs, sizes, send))
        like = bound(certificate(p, v, m))
        assert best >= like * (1 - 1e-6)
        better += best > like * (1 + 1e-3)
        for _ in range(5):
            weights = [[rng.random() for _ in range(v)] for _ in range(p)]
            assert best >= bound(evaluate(p, v, m, [rng.random() for _ in range(p)], weights,
                                          weights)) * (1 - 1e-6)
    assert better > 0


def test_recomputation_on_two_groups_is_priced_at_each_groups_own_extra() -> None:
    """A group slower without recomputation may recompute for less (its attention is faster):
    23 layers cost 1.0 / 2.0 s (none / selective) on A and 1.1 / 1.3 s on B, and 10 of them
    must recompute. 13 layers without recomputation on A and 10 selective on B load each
    device 13 s. Priced at the cheapest group (selective 1.3 - none 1.0 = 0.3 s a layer), the
    two-group bound would say 13.48 s; at each group's own extra (least 0.2 s, on B) it stays
    at most 13 s. Found by review."""
    from types import SimpleNamespace

    from autopar.solver.bounds import _extra_options, _least_busiest_of_two

    class Figures:
        def __init__(self, work: dict[str, float]) -> None:
            self.work = work

        def forward(self, mode: str) -> float:
            return self.work[mode] / 3

        def backward(self, mode: str) -> float:
            return 2 * self.work[mode] / 3

    a, b = object(), object()
    base = {id(a): [Figures({"none": 1.0, "selective": 2.0})],
            id(b): [Figures({"none": 1.1, "selective": 1.3})]}
    tables: Any = SimpleNamespace(
        shape=SimpleNamespace(tp=1, sequence_parallel=False, cp=1, micro_batch_size=1, pp=2),
        distinct_groups=[a, b], groups=[a, b], modes=("none", "selective"),
        base=lambda g: base[id(g)], classes=SimpleNamespace(size=[23]), costs={})
    extra = _extra_options(tables)[0][1][0]
    assert extra == pytest.approx(0.2)
    assert _least_busiest_of_two(tables, 10 * extra) <= 13.0
    tables.costs = {}
    assert _least_busiest_of_two(tables, 10 * 0.3) > 13.0  # the old pricing: unsound here


def test_tp_divides_the_heads_of_an_attention_traced_as_matmuls() -> None:
    """Eager attention has no attention op, only matmuls whose scores are [batch, heads, seq,
    seq] (GPT-2) or [batch * heads, seq, seq] (BLOOM's baddbmm): tp must still divide the
    heads (6 here, on a node of 8, so tp 1 or 2; traced at batch 2, which must not count),
    and context parallelism, whose ring exchange needs the key/value heads of an attention
    op, stays 1. Pinning either otherwise is refused up front, naming the heads."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel

    from autopar.layer_profiles import layer_profiles
    from autopar.solver.constraints import ConstraintError

    gpt2 = GPT2Config(n_embd=384, n_layer=2, n_head=6, vocab_size=1000, n_positions=256,
                      use_cache=False)
    gpt2._attn_implementation = "eager"
    bloom = BloomConfig(hidden_size=384, n_layer=2, n_head=6, vocab_size=1000, use_cache=False)
    cluster = Cluster.from_profile("dgx-a100", nodes=1)
    for config, kind in ((gpt2, GPT2LMHeadModel), (bloom, BloomForCausalLM)):
        with torch.device("meta"):
            model = kind(config).to(torch.bfloat16)
        ids = torch.zeros(2, 256, dtype=torch.long)
        graph = autopar.trace(model, (ids,), {"labels": ids})
        assert {p.max_heads for p in layer_profiles(graph)} == {0, 6}, kind
        with pytest.raises(ConfigError, match="does not divide the model's 6 attention heads"):
            estimate(graph, cluster, ParallelConfig(dp=2, tp=4), global_batch_size=8)
        for pins in (None, {"pp": 1, "zero_stage": 0}):
            plan = autopar.plan(graph, cluster, global_batch_size=8, constraints=pins)
            assert 6 % plan.config.tp == 0 and plan.config.cp == 1
        with pytest.raises(ConstraintError, match="tp=4 does not divide the model's 6 attention"):
            autopar.plan(graph, cluster, global_batch_size=8, constraints={"tp": 4})
        with pytest.raises(ConstraintError, match="cp=2 needs an attention op"):
            autopar.plan(graph, cluster, global_batch_size=8, constraints={"cp": 2})


def test_even_splits_spread_the_layers_with_the_extra_ones_first_or_last() -> None:
    """``space.even_splits``: what the first plans try where Megatron's split cannot
    divide the blocks among the chunks."""
    from autopar.solver.space import even_splits

    assert even_splits(83, 14) == [(6,) * 13 + (5,), (5,) + (6,) * 13]
    assert even_splits(129, 128) == [(2,) + (1,) * 127, (1,) * 127 + (2,)]
    assert even_splits(12, 4) == [(3, 3, 3, 3)]
    for layers, chunks in itertools.product(range(1, 30), range(1, 30)):
        if chunks > layers:
            continue
        for split in even_splits(layers, chunks):
            assert sum(split) == layers and len(split) == chunks
            assert max(split) - min(split) <= 1
