"""The executor: training under a plan on CPU processes (gloo) gives the same losses and final
weights as single-process training on the same global batch (float32, 3 SGD steps)."""

from __future__ import annotations

import functools

import pytest

from autopar.executor.errors import PlanMismatchError
from autopar.executor.layout import check_world, layout_of
from autopar.executor.sp import GatherInput, sp_plan
from autopar.executor.tp import tied_modules, tp_plan
from tests.executor_util import (
    build,
    compare,
    graph_of,
    make_plan,
    reference,
    run_ranks,
    train_ranks,
)

GLOBAL_BATCH = 8
STEPS = 3
TOLERANCE = 1e-5

CONFIGS = {
    "dp4": dict(dp=4),
    "fsdp4": dict(dp=4, zero_stage=3),
    "tp2dp2": dict(tp=2, dp=2),
    "pp2dp2": dict(pp=2, dp=2),
    "pp2tp2": dict(pp=2, tp=2),
    "pp2tp2dp2": dict(pp=2, tp=2, dp=2),
}


@functools.cache
def _graph(name: str):  # type: ignore[no-untyped-def]
    return graph_of(name)


@functools.cache
def _reference(name: str):  # type: ignore[no-untyped-def]
    return reference(name, GLOBAL_BATCH, STEPS)


def _check(name: str, **config: object) -> float:
    graph = _graph(name)
    plan = make_plan(graph, GLOBAL_BATCH, **config)
    results = run_ranks(plan.world_size, train_ranks, name, plan, graph, STEPS)
    return compare(results, _reference(name))


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", ["mlp", "llama", "gpt2"])
def test_same_as_single_process(name: str, config: str) -> None:
    worst = _check(name, **CONFIGS[config])
    assert worst <= TOLERANCE, f"{name} {config}: max relative difference {worst:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("config", [
    dict(pp=2, virtual_stages=2, schedule="interleaved"),
    dict(pp=2, schedule="gpipe", dp=2, zero_stage=2, recompute="full"),
    dict(tp=2, dp=2, zero_stage=3, recompute="selective", micro_batch_size=2),
])
def test_schedules_zero_and_recompute(config: dict[str, object]) -> None:
    assert _check("llama", **config) <= TOLERANCE


@pytest.mark.slow
def test_sequence_parallel_same_as_single_process() -> None:
    worst = _check("llama", tp=2, dp=2, sequence_parallel=True)
    assert worst <= TOLERANCE, f"llama tp2dp2+sp: max relative difference {worst:.2e}"


def test_sp_plan_shards_the_sequence_between_blocks() -> None:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, SequenceParallel

    model, graph = build("llama"), _graph("llama")
    tp, _ = tp_plan(model, graph.layers, 2, tied_modules(model))
    plan, reason = sp_plan(model, graph.layers, tp)
    assert reason is None
    layer = "model.layers.0"
    for norm in (f"{layer}.input_layernorm", f"{layer}.post_attention_layernorm", "model.norm"):
        assert isinstance(plan[norm], SequenceParallel)
    assert isinstance(plan[f"{layer}.self_attn"], GatherInput)
    assert isinstance(plan[f"{layer}.mlp"], GatherInput)
    assert plan[f"{layer}.mlp.down_proj"].output_layouts == (Shard(1),)  # type: ignore[attr-defined]
    assert tp[f"{layer}.mlp.down_proj"].output_layouts != (Shard(1),)  # type: ignore[attr-defined]
    assert plan["model.embed_tokens"].output_layouts == (Shard(1),)  # type: ignore[attr-defined]
    head = plan["lm_head"]
    assert isinstance(head, ColwiseParallel) and head.input_layouts == (Shard(1),)


@pytest.mark.parametrize("name,part", [("gpt2", "transformer.h.0.attn"),
                                       ("mlp", "no split attention/MLP blocks")])
def test_sp_plan_falls_back_naming_the_part(name: str, part: str) -> None:
    model, graph = build(name), _graph(name)
    tp, _ = tp_plan(model, graph.layers, 2, tied_modules(model))
    plan, reason = sp_plan(model, graph.layers, tp)
    assert plan is tp and reason is not None and part in reason


def test_tp_plan_splits_attention_heads_and_mlp() -> None:
    model, graph = build("llama"), _graph("llama")
    plan, attention = tp_plan(model, graph.layers, 2, tied_modules(model))
    names = set(plan)
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert f"model.layers.0.{part}" in names
    assert {"model.embed_tokens", "lm_head"} <= names
    assert len(attention) == 4


def test_gpt2_fused_qkv_stays_replicated_and_tied_vocab_is_not_split() -> None:
    model, graph = build("gpt2"), _graph("gpt2")
    plan, _ = tp_plan(model, graph.layers, 2, tied_modules(model))
    assert "transformer.h.0.mlp.c_fc" in plan and "transformer.h.0.attn.c_attn" not in plan
    assert "transformer.wte" not in plan and "lm_head" not in plan


def test_plan_for_another_model_is_refused() -> None:
    plan = make_plan(_graph("mlp"), GLOBAL_BATCH, dp=4)
    with pytest.raises(PlanMismatchError, match="name: plan has 'Sequential', model has "
                                                "'LlamaForCausalLM'.*parameters"):
        layout_of(build("llama"), plan, graph=_graph("llama"))


def test_world_size_mismatch_is_refused() -> None:
    plan = make_plan(_graph("mlp"), GLOBAL_BATCH, dp=2, tp=2)
    with pytest.raises(PlanMismatchError, match="needs 4 processes .* this job has 3"):
        check_world(plan, 3)
