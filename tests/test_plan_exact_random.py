"""``plan()`` against brute force on random small cases.

A seeded generator draws the model (Hugging Face GPT-2, Llama and BERT shapes, plain PyTorch
stacks, a mixture of experts), the cluster (four presets and A100 + H100 in either order),
the devices' memory (from 0.7 to 3 times what a plain data-parallel step needs), the
global batch and the pins (tp, ZeRO, micro-batch size, schedule, recomputation modes,
headroom). The reference is every valid configuration that obeys the pins
(``tests/brute_force.py``). The search must return its optimum, prove it, and, stopped at once
by a time limit, report a lower bound no higher than it. Such a check found that pinning a
ZeRO stage dropped every configuration without data parallelism.
"""

from __future__ import annotations

import random
import warnings
from functools import cache
from typing import Any

import pytest
import torch

import autopar
from autopar.cluster import Cluster
from autopar.config import ParallelConfig
from autopar.estimate import Estimate, estimate
from autopar.layer_profiles import has_ring_attention, layer_profiles
from autopar.solver.constraints import Constraints
from autopar.solver.search import search
from autopar.tracing import ModelGraph
from tests import brute_force
from tests.models import TinyMoE, hf_model, mlp, small_gpt_graph
from tests.test_planner import tight

CASES = 30
PRESETS = ("dgx-a100", "dgx-h100", "aws-p4d", "hgx-h200", "a100+h100", "h100+a100")


@cache
def _graph(name: str) -> ModelGraph:
    if name == "small-gpt":
        return small_gpt_graph()
    if name == "mlp":
        return autopar.trace(mlp().to(torch.bfloat16), (torch.zeros(512, 32),))
    if name == "moe":
        ids = torch.zeros(2, 128, dtype=torch.long)
        with warnings.catch_warnings():  # its routing is data-dependent: traced by hooks
            warnings.simplefilter("ignore", autopar.TraceFallbackWarning)
            return autopar.trace(TinyMoE().to(torch.bfloat16), (ids,))
    kind, layers, hidden = name.split("-")
    model = hf_model(kind, layers=int(layers), hidden=int(hidden), dtype=torch.bfloat16)
    return autopar.trace(model, (torch.zeros(2, 128, dtype=torch.long),))


def _cluster(name: str) -> Cluster:
    if "+" not in name:
        return Cluster.from_profile(name, nodes=1)
    groups = [Cluster.from_profile(f"dgx-{part}", nodes=1).groups[0] for part in name.split("+")]
    return Cluster(name=name, groups=groups)


def random_case(seed: int) -> tuple[ModelGraph, Cluster, int, dict[str, Any]]:
    """A model, a cluster with devices of drawn memory, a global batch and pins."""
    rng = random.Random(seed)
    name = rng.choice(["gpt2-3-128", "llama-3-128", "llama-2-256", "bert-2-64", "small-gpt",
                       "mlp", "moe"])
    graph = _graph(name)
    cluster = _cluster(rng.choice(PRESETS))
    per_group = cluster.world_size // len(cluster.groups)
    plain = estimate(graph, cluster, ParallelConfig(dp=per_group, pp=len(cluster.groups)),
                     global_batch_size=cluster.world_size)
    gib = plain.peak_memory * rng.choice([0.7, 1.0, 1.5, 1.5, 3.0, 3.0]) / 2**30
    cluster = tight(cluster, gib)
    ring = has_ring_attention(layer_profiles(graph))
    pins: dict[str, Any] = dict(cp=rng.choice([1, 1, 2]) if ring else 1,
                                recompute=rng.choice([("none",), ("none", "full")]))
    if pins["recompute"] != ("none",) or rng.random() < 0.5:
        # Recomputation per layer multiplies the space: pin the degrees it is tried under.
        pins.update(tp=rng.choice([1, 2]), zero_stage=rng.randrange(4),
                    micro_batch_size=rng.choice([1, 2]))
    if rng.random() < 0.4:
        # Interleaving needs two chunks per stage: only where there are layers for them.
        schedules = brute_force.SCHEDULES if len(graph.layers) >= 8 else brute_force.SCHEDULES[:3]
        pins["schedule"] = rng.choice(schedules)
    if rng.random() < 0.3:
        pins["memory_headroom"] = rng.choice([0.1, 0.3])
    return graph, cluster, rng.choice([8, 16, 32]), pins


@pytest.fixture(scope="module")
def optimum() -> dict[int, Estimate | None]:
    """The reference's answer for every case, by seed."""
    return {seed: brute_force.fastest(*random_case(seed)) for seed in range(CASES)}


@pytest.mark.slow
def test_most_random_cases_have_a_plan(optimum: dict[int, Estimate | None]) -> None:
    """A case where nothing fits only checks that nothing is found: keep them few."""
    assert sum(e is not None for e in optimum.values()) >= 2 * CASES // 3


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(CASES))
def test_plan_is_the_brute_force_optimum_on_random_cases(
        seed: int, optimum: dict[int, Estimate | None]) -> None:
    graph, cluster, gbs, pins = random_case(seed)
    best = optimum[seed]
    if best is None:
        with pytest.raises(autopar.InfeasibleError):
            autopar.plan(graph, cluster, global_batch_size=gbs, constraints=pins)
        return
    plan = autopar.plan(graph, cluster, global_batch_size=gbs, constraints=pins)
    assert plan.estimate.step_time == pytest.approx(best.step_time, rel=1e-9)
    assert plan.solver.optimal and plan.solver.gap == 0
    # Stopped at once (it may have no plan yet: ``search``, which ``plan`` runs, says so).
    rushed = search(graph, cluster, global_batch_size=gbs, precision="bf16", optimizer="adamw",
                    constraints=Constraints.of(pins), time_limit_s=0.01)
    assert rushed.stats.lower_bound <= best.step_time * (1 + 1e-9)
    if rushed.best is not None:
        assert rushed.best.estimate.step_time >= best.step_time * (1 - 1e-9)
