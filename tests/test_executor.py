"""The executor: training under a plan on CPU processes (gloo) gives the same losses and final
weights as single-process training on the same global batch (float32, 3 SGD steps)."""

from __future__ import annotations

import functools
import warnings

import pytest

from autopar.executor.errors import PlanMismatchError
from autopar.executor.layout import check_world, layout_of
from autopar.executor.sp import GatherInput, sp_plan
from autopar.executor.tp import sequence_parallel_applies, tied_modules, tp_plan
from tests.executor_util import (
    SEQ,
    build,
    compare,
    graph_of,
    make_plan,
    reference,
    run_ranks,
    train_ranks,
    train_recording_outputs,
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
@pytest.mark.parametrize("config", [dict(schedule="gpipe", recompute="full"),
                                    dict(schedule="gpipe", recompute="selective"),
                                    dict(schedule="zero_bubble")],
                         ids=["gpipe-full", "gpipe-selective", "zero_bubble"])
def test_pipeline_stages_under_ddp(config: dict[str, object]) -> None:
    """pp2 x dp2 with DDP (ZeRO-0): under GPipe the stage's metadata forward must not arm
    DDP's reducer (it crashed rebuilding buckets); under zero-bubble the weight gradients,
    which bypass DDP's hooks, must still be averaged over dp."""
    worst = _check("llama", pp=2, dp=2, **config)
    assert worst <= TOLERANCE, f"llama pp2dp2 {config}: max relative difference {worst:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(tp=2, dp=2), dict(pp=2, tp=2)],
                         ids=["tp2dp2", "pp2tp2"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_sequence_parallel_same_as_single_process(name: str, config: dict[str, int]) -> None:
    graph = _graph(name)
    plan = make_plan(graph, GLOBAL_BATCH, sequence_parallel=True, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forked ranks inherit it: a fallback fails the test
        ranks = run_ranks(plan.world_size, train_recording_outputs, name, plan, graph, STEPS)
    worst = compare([r[:2] for r in ranks], _reference(name))
    assert worst <= TOLERANCE, f"{name} {config}+sp: max relative difference {worst:.2e}"
    if config.get("pp"):  # the first stage sends its tp rank's half of the sequence
        sent = {shape for r in ranks[:2] for shape in r[2]}
        assert sent == {(GLOBAL_BATCH // plan.config.micro_batches(GLOBAL_BATCH), SEQ // 2,
                         32)}


def test_sp_plan_of_pipeline_chunks_keeps_the_sequence_sharded() -> None:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, SequenceParallel

    model, graph = build("llama"), _graph("llama")
    layers, tied = graph.layers, tied_modules(model)
    head = [layer for layer in layers if layer.index >= 3]
    tp, _ = tp_plan(model, head, 2, tied)
    plan, reason = sp_plan(model, head, tp, whole_model=False)
    assert reason is None
    assert isinstance(plan["model.norm"], SequenceParallel)
    assert isinstance(plan["model.layers.3.input_layernorm"], SequenceParallel)
    lm_head = plan["lm_head"]
    assert isinstance(lm_head, ColwiseParallel) and lm_head.input_layouts == (Shard(1),)
    embed = layers[:2]
    plan, reason = sp_plan(model, embed, tp_plan(model, embed, 2, tied)[0], whole_model=False)
    assert reason is None
    assert plan["model.embed_tokens"].output_layouts == (Shard(1),)  # type: ignore[attr-defined]


def test_sequence_parallel_is_decided_for_the_whole_model() -> None:
    model, graph = build("mlp"), _graph("mlp")
    with pytest.warns(UserWarning, match=r"no split attention/MLP blocks"):
        assert not sequence_parallel_applies(model, graph.layers, 2, tied_modules(model))
    for name in ("llama", "gpt2"):
        model = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert sequence_parallel_applies(model, _graph(name).layers, 2, tied_modules(model))


def test_sp_plan_of_gpt2_shards_both_embeddings() -> None:
    """GPT-2 adds a position embedding to the token embedding: both outputs become
    ``Shard(1)``, so their sum is; its tied head gathers its input."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import PrepareModuleOutput, SequenceParallel

    model, graph = build("gpt2"), _graph("gpt2")
    tp, _ = tp_plan(model, graph.layers, 2, tied_modules(model))
    plan, reason = sp_plan(model, graph.layers, tp)
    assert reason is None
    for embedding in ("transformer.wte", "transformer.wpe"):
        style = plan[embedding]
        assert isinstance(style, PrepareModuleOutput)
        assert style.desired_output_layouts == (Shard(1),)
    for norm in ("transformer.h.0.ln_1", "transformer.h.0.ln_2", "transformer.ln_f"):
        assert isinstance(plan[norm], SequenceParallel)
    assert isinstance(plan["transformer.h.0.attn"], GatherInput)
    assert plan["transformer.h.0.attn.c_proj"].inner.output_layouts == (Shard(1),)  # type: ignore[attr-defined]
    assert isinstance(plan["lm_head"], GatherInput)


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


@pytest.mark.parametrize("name,part", [("mlp", "no split attention/MLP blocks")])
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


def test_gpt2_fused_qkv_is_split_by_heads_and_tied_vocab_is_not_split() -> None:
    from autopar.executor.tp import _FusedColumnStyle

    model, graph = build("gpt2"), _graph("gpt2")
    plan, attention = tp_plan(model, graph.layers, 2, tied_modules(model))
    assert "transformer.h.0.mlp.c_fc" in plan
    qkv = plan["transformer.h.0.attn.c_attn"]
    assert isinstance(qkv, _FusedColumnStyle) and qkv.fused == 3
    assert "transformer.h.0.attn.c_proj" in plan and len(attention) == 4
    assert "transformer.wte" not in plan and "lm_head" not in plan


def _qkv_shards(rank: int, plan, graph):  # type: ignore[no-untyped-def]
    """This rank's local c_attn weight and bias of layer 0, its attention's local head count
    and split size, and the full weight."""
    import autopar

    pm = autopar.parallelize(build("gpt2"), plan, graph=graph)
    attn = pm.modules()[0].get_submodule("transformer.h.0.attn")
    weight, bias = attn.c_attn.weight, attn.c_attn.bias
    return (weight.to_local(), bias.to_local(), attn.num_heads, attn.split_size,
            weight.full_tensor())


@pytest.mark.slow
def test_gpt2_tp_ranks_hold_q_k_v_of_their_heads() -> None:
    """Under tp2 rank r holds columns [r*16, r*16+16) of each of q, k and v (2 of 4 heads of
    width 8; hidden 32): not a contiguous half of [q | k | v]."""
    graph = _graph("gpt2")
    plan = make_plan(graph, GLOBAL_BATCH, tp=2)
    ranks = run_ranks(2, _qkv_shards, plan, graph)
    full = build("gpt2").get_submodule("transformer.h.0.attn.c_attn")
    for r, (weight, bias, heads, split, whole) in enumerate(ranks):
        cols = [c for part in range(3) for c in range(32 * part + 16 * r, 32 * part + 16 * r + 16)]
        assert weight.equal(full.weight.detach()[:, cols]) and bias.equal(full.bias.detach()[cols])
        assert (heads, split) == (2, 16) and whole.equal(full.weight.detach())


def test_plan_for_another_model_is_refused() -> None:
    plan = make_plan(_graph("mlp"), GLOBAL_BATCH, dp=4)
    with pytest.raises(PlanMismatchError, match="name: plan has 'Sequential', model has "
                                                "'LlamaForCausalLM'.*parameters"):
        layout_of(build("llama"), plan, graph=_graph("llama"))


def test_world_size_mismatch_is_refused() -> None:
    plan = make_plan(_graph("mlp"), GLOBAL_BATCH, dp=2, tp=2)
    with pytest.raises(PlanMismatchError, match="needs 4 processes .* this job has 3"):
        check_world(plan, 3)
