"""Pipeline schedules: closed forms for equal stages, bounds for unequal ones, errors.

Closed forms checked (f, b: forward and backward per micro-batch of one device's layers; m
micro-batches, p devices, v virtual stages per device, w the weight-gradient part of b):

- GPipe (Huang et al. 2019) and 1F1B (PipeDream-flush, Narayanan et al. 2021): step
  (m + p - 1)(f + b), bubble fraction (p - 1)/(m + p - 1).
- Megatron's interleaved 1F1B (Narayanan et al., SC'21, section 2.2.2): bubble (p - 1)(f + b)/v.
- ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024, arXiv:2401.10241, Table 2):
  bubble (p - 1)(T_F + T_B - T_W) with T_B the input-gradient and T_W the weight-gradient time,
  i.e. (p - 1)(f + b - 2w); peak activations p M_B, as 1F1B.
"""

from __future__ import annotations

import random

import pytest
from autopar.cost_models.pipeline import PipelineError, PipelineResult, StageCost, simulate

from autopar.errors import AutoparError

F, B = 1.0, 2.0
PS = (1, 2, 4, 8)


def equal(p: int, f: float = F, b: float = B, **kw: float) -> list[StageCost]:
    return [StageCost(f, b, **kw)] * p


def random_stages(rng: random.Random, p: int, send: bool = True) -> list[StageCost]:
    return [
        StageCost(
            forward=rng.uniform(0.2, 2.0),
            backward=rng.uniform(0.4, 4.0),
            send=rng.uniform(0.0, 0.3) if send else 0.0,
        )
        for _ in range(p)
    ]


# ---------------------------------------------------------------- closed forms, equal stages


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("p", PS)
def test_gpipe_and_1f1b_take_m_plus_p_minus_1_slots(schedule, p, m):
    r = simulate(equal(p), m, schedule)
    assert r.step_time == pytest.approx((m + p - 1) * (F + B))
    assert r.bubble_time / r.step_time == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("p", PS)
def test_activations_in_flight_gpipe_holds_all_1f1b_holds_p_minus_s(p, m):
    # One device is no pipeline: gradient accumulation holds one micro-batch, whatever the
    # schedule is called (the executor runs it so).
    assert simulate(equal(p), m, "gpipe").in_flight == ([m] * p if p > 1 else [1])
    assert simulate(equal(p), m, "1f1b").in_flight == [min(p - s, m) for s in range(p)]


@pytest.mark.parametrize("v", [2, 3, 4])
@pytest.mark.parametrize("m_over_p", [1, 2, 4])
@pytest.mark.parametrize("p", PS)
def test_interleaved_bubble_shrinks_by_v(p, v, m_over_p):
    m = m_over_p * p
    chunks = equal(p * v, F / v, B / v)  # each chunk holds 1/v of a device's layers
    r = simulate(chunks, m, "interleaved", virtual_stages=v)
    assert r.bubble_time == pytest.approx((p - 1) * (F + B) / v)
    assert r.step_time == pytest.approx(m * (F + B) + (p - 1) * (F + B) / v)


@pytest.mark.parametrize("v", [2, 4])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_interleaved_in_flight_is_megatrons_warmup_plus_one(p, v):
    """Megatron: 2(p-d-1) + (v-1)p warm-up chunks, +1; all m*v when m == p."""
    chunks = equal(p * v, F / v, B / v)
    r = simulate(chunks, 2 * p, "interleaved", virtual_stages=v)
    assert r.in_flight == [2 * (p - d - 1) + (v - 1) * p + 1 for d in range(p)]
    assert simulate(chunks, p, "interleaved", virtual_stages=v).in_flight == [p * v] * p
    # On device 0 that is p (1 + (p-1)/(p v)) micro-batches of activations: Megatron's
    # interleaved-schedule memory penalty.
    assert r.in_flight[0] / v == pytest.approx(p * (1 + (p - 1) / (p * v)))


def test_interleaved_with_one_virtual_stage_is_1f1b():
    stages = equal(4)
    assert simulate(stages, 6, "interleaved", 1) == simulate(stages, 6, "1f1b")


@pytest.mark.parametrize("w", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("m_over_p", [1, 2, 4])
@pytest.mark.parametrize("p", PS)
def test_zero_bubble_h1_bubble_matches_qi_et_al(p, m_over_p, w):
    """Holds while W is no longer than B (w <= b/2), the regime of the paper's schedules."""
    m = m_over_p * p
    r = simulate(equal(p, backward_weight=w), m, "zero_bubble")
    weight = w or B / 2  # 0 means "assume half of backward"
    assert r.bubble_time == pytest.approx((p - 1) * (F + B - 2 * weight))
    assert r.step_time == pytest.approx(m * (F + B) + (p - 1) * (F + B - 2 * weight))
    assert r.in_flight == simulate(equal(p), m, "1f1b").in_flight  # memory like 1F1B


def test_zero_bubble_with_a_long_weight_gradient_stays_between_bounds():
    """W longer than B: stage 0 still idles (p-1) T_B waiting for its first B."""
    p, m, w = 4, 8, 1.5
    r = simulate(equal(p, backward_weight=w), m, "zero_bubble")
    assert (p - 1) * (B - w) <= r.bubble_time < simulate(equal(p), m, "1f1b").bubble_time


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zero_bubble"])
@pytest.mark.parametrize("m", [1, 5])
def test_one_stage_has_no_bubble(schedule, m):
    r = simulate(equal(1), m, schedule)
    assert r.step_time == pytest.approx(m * (F + B))
    assert r.bubble_time == pytest.approx(0.0)
    chunks = equal(3, F / 3, B / 3)
    r = simulate(chunks, m, "interleaved", virtual_stages=3)
    assert (r.step_time, r.bubble_time) == pytest.approx((m * (F + B), 0.0))


# ---------------------------------------------------------------- unequal stages


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zero_bubble"])
def test_slowest_stage_dominates_unequal_stages(schedule):
    rng = random.Random(0)
    for _ in range(60):
        p, m = rng.randint(1, 6), rng.randint(1, 16)
        stages = random_stages(rng, p)
        r = simulate(stages, m, schedule)
        busiest = max(s.forward + s.backward for s in stages)
        assert r.step_time >= m * busiest - 1e-9
        assert r.bubble_time == pytest.approx(r.step_time - m * busiest)
        if schedule == "gpipe":
            # Its forward and backward phases are each paced by their own slowest stage, and
            # fill and drain cost at most one pass of every stage plus every send.
            pace = max(s.forward for s in stages) + max(s.backward for s in stages)
            fill_drain = sum(s.forward + s.backward + 2 * s.send for s in stages)
            assert r.step_time <= m * pace + fill_drain + 1e-9


def test_one_slow_stage_sets_the_pace():
    stages = [StageCost(1, 2), StageCost(1, 2), StageCost(3, 6), StageCost(1, 2)]
    for schedule in ("gpipe", "1f1b", "zero_bubble"):
        r = simulate(stages, 64, schedule)
        assert 64 * 9 <= r.step_time <= 64 * 9 + 15  # + one pass of the others' 3 s each


def test_zero_bubble_never_slower_than_1f1b():
    rng = random.Random(1)
    for _ in range(60):
        p, m = rng.randint(1, 6), rng.randint(1, 16)
        stages = random_stages(rng, p)
        zb, ofob = simulate(stages, m, "zero_bubble"), simulate(stages, m, "1f1b")
        assert zb.step_time <= ofob.step_time + 1e-9
        assert zb.in_flight == ofob.in_flight


def test_interleaved_unequal_chunks_respect_the_busiest_device():
    rng = random.Random(2)
    for _ in range(30):
        p, v = rng.randint(1, 4), rng.randint(2, 3)
        chunks = random_stages(rng, p * v)
        m = p * rng.randint(1, 4)
        r = simulate(chunks, m, "interleaved", virtual_stages=v)
        per_device = [
            sum(c.forward + c.backward for c in chunks[d::p]) for d in range(p)
        ]  # chunk k lives on device k % p
        assert r.step_time >= m * max(per_device) - 1e-9
        assert r.bubble_time == pytest.approx(r.step_time - m * max(per_device))


# ---------------------------------------------------------------- sends


@pytest.mark.parametrize("m", [4, 8, 16])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_sends_add_latency_per_stage_boundary(p, m):
    c = 0.1
    gpipe = simulate(equal(p, send=c), m, "gpipe").step_time
    assert gpipe == pytest.approx((m + p - 1) * (F + B) + 2 * (p - 1) * c)  # fill and drain
    for schedule in ("1f1b", "zero_bubble"):
        with_sends = simulate(equal(p, send=c), m, schedule).step_time
        assert with_sends >= simulate(equal(p), m, schedule).step_time + 2 * (p - 1) * c - 1e-9
    v, m = 2, m * p  # interleaved needs a multiple of p micro-batches
    inter = simulate(equal(p * v, F / v, B / v, send=c), m, "interleaved", v).step_time
    base = simulate(equal(p * v, F / v, B / v), m, "interleaved", v).step_time
    assert inter == pytest.approx(base + 2 * (p * v - 1) * c)


def test_last_stage_send_is_unused_and_sends_slow_every_schedule_monotonically():
    stages = equal(3) + [StageCost(F, B, send=99.0)]
    assert simulate(stages, 8, "1f1b") == simulate(equal(4), 8, "1f1b")
    for schedule in ("gpipe", "1f1b", "zero_bubble"):
        times = [simulate(equal(4, send=c), 8, schedule).step_time for c in (0, 0.05, 0.1, 0.5)]
        assert times == sorted(times)


def test_result_type():
    r = simulate(equal(2), 2, "1f1b")
    assert isinstance(r, PipelineResult)
    assert r.in_flight == [2, 1]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: simulate(equal(2), 0, "1f1b"), r"micro_batches=0 must be an integer >= 1"),
        (lambda: simulate(equal(2), 2.0, "1f1b"), r"micro_batches=2\.0"),  # type: ignore[arg-type]
        (lambda: simulate([], 4, "1f1b"), r"at least one stage"),
        (
            lambda: simulate(equal(2), 4, "pipedream"),  # type: ignore[arg-type]
            r"'pipedream'.*gpipe, 1f1b, interleaved",
        ),
        (lambda: simulate(equal(4), 4, "1f1b", 2), r"virtual_stages=2 needs schedule"),
        (lambda: simulate(equal(4), 4, "interleaved", 0), r"virtual_stages=0"),
        (
            lambda: simulate(equal(6), 4, "interleaved", 4),
            r"6 stages is not a multiple of virtual_stages=4",
        ),
        (lambda: simulate(equal(8), 6, "interleaved", 2), r"multiple of the 4 pipeline devices"),
        (lambda: StageCost(-1.0, 1.0), r"StageCost\.forward=-1\.0"),
        (lambda: StageCost(1.0, float("nan")), r"StageCost\.backward=nan"),
        (lambda: StageCost(1.0, 1.0, send=-0.1), r"StageCost\.send=-0\.1"),
        (lambda: StageCost(1.0, 1.0, backward_weight=2.0), r"backward_weight=2\.0 exceeds"),
    ],
)
def test_invalid_inputs_raise_pipeline_error(call, match):
    assert issubclass(PipelineError, AutoparError)
    with pytest.raises(PipelineError, match=match):
        call()


def test_fixed_order_schedules_equal_the_event_simulation_to_the_bit() -> None:
    """``simulate`` runs GPipe, 1F1B and interleaved without the event queue (each op in its
    device's order): step time, busy times (so the bubble) and memory are exactly what the
    event simulation of the same orders gives."""
    import random

    from autopar.cost_models.pipeline import _orders, _peak_activations, _Simulation

    rng = random.Random(3)
    for _ in range(400):
        schedule = rng.choice(["gpipe", "1f1b", "interleaved"])
        p = rng.randint(1, 7)
        v = rng.randint(1, 4) if schedule == "interleaved" else 1
        m = p * rng.randint(1, 4) if schedule == "interleaved" else rng.randint(1, 12)
        stages = [StageCost(rng.random(), 3 * rng.random(),
                            send=rng.choice([0.0, 0.3 * rng.random()])) for _ in range(p * v)]
        r = simulate(stages, m, schedule, v)  # type: ignore[arg-type]
        orders = _orders(schedule, p, m, v)
        step, busy = _Simulation(stages, orders, False).run()
        assert r.step_time == step and r.bubble_time == step - max(busy)
        assert r.in_flight == [_peak_activations(o) for o in orders]


def test_zero_bubble_equals_the_event_simulation_to_the_bit() -> None:
    """``simulate`` runs zero-bubble with its own loop (finish times in lists, choices
    inline): step time and busy times are exactly the general event simulation's, including
    weight gradients that exactly fit a gap, free ones, sends and single-stage pipelines."""
    import random

    from autopar.cost_models.pipeline import _orders, _Simulation

    rng = random.Random(5)
    for _ in range(600):
        p, m = rng.randint(1, 8), rng.randint(1, 16)

        def cost() -> float:
            # Mostly small integers, so that weight gradients often fit a gap exactly.
            return rng.choice([0.0, 1.0, 1.0, 2.0, 3.0, rng.random(), 3 * rng.random()])

        stages = []
        for _ in range(p):
            forward, backward = cost(), cost()
            weight = rng.choice([0.0, backward / 2, backward / 2, backward * rng.random(),
                                 backward])
            stages.append(StageCost(forward, backward, weight, rng.choice([0.0, 0.0, cost()])))
        r = simulate(stages, m, "zero_bubble")
        step, busy = _Simulation(stages, _orders("zero_bubble", p, m, 1), True).run()
        assert r.step_time == step and r.bubble_time == step - max(busy)
