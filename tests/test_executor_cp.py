"""Context parallelism: each cp rank runs its zig-zag half of every sequence, attention gathers
K/V over the cp group, and training matches single-process training of the same model (HF
Llama with SDPA attention and GQA) on the same global batch."""

from __future__ import annotations

import pytest
import torch

from autopar.executor.cp import sequence_positions, shard_sequence
from autopar.executor.errors import ExecutorError
from autopar.executor.layout import layout_of
from tests.executor_util import (
    SEQ,
    build,
    compare,
    graph_of,
    make_plan,
    reference,
    run_ranks,
    train_recording_outputs,
)

BATCH = 8
STEPS = 3
TOLERANCE = 1e-5
NAME = "llama_sdpa"


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(cp=2, dp=2), dict(cp=2, tp=2), dict(pp=2, cp=2)],
                         ids=["cp2dp2", "cp2tp2", "pp2cp2"])
def test_cp_same_as_single_process(config: dict[str, int]) -> None:
    graph = graph_of(NAME)
    plan = make_plan(graph, BATCH, **config)
    ranks = run_ranks(plan.world_size, train_recording_outputs, NAME, plan, graph, STEPS)
    worst = compare([r[:2] for r in ranks], reference(NAME, BATCH, STEPS))
    assert worst <= TOLERANCE, f"llama {config}: max relative difference {worst:.2e}"
    lengths = {shape[1] for r in ranks for shape in r[2]}  # logits and stage outputs
    assert lengths == {SEQ // 2}


def test_sequence_positions_are_zig_zag_halves() -> None:
    assert sequence_positions(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert sequence_positions(8, 2, 1).tolist() == [2, 3, 4, 5]
    every = torch.cat([sequence_positions(16, 4, r) for r in range(4)])
    assert sorted(every.tolist()) == list(range(16))
    with pytest.raises(ExecutorError, match="sequence length is 6; use a sequence length "
                                            "divisible by 4"):
        sequence_positions(6, 2, 0)


def test_shard_sequence_cuts_inputs_target_and_positions() -> None:
    ids = torch.arange(16).view(2, 8)
    inputs, target = shard_sequence({"_arg0": ids}, ids + 100, cp=2, rank=1)
    assert inputs["_arg0"].tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]
    assert target.tolist() == [[102, 103, 104, 105], [110, 111, 112, 113]]
    assert inputs["position_ids"].tolist() == [[2, 3, 4, 5]] * 2
    with pytest.raises(ExecutorError, match="attention_mask"):
        shard_sequence({"input_ids": ids, "attention_mask": ids}, ids, cp=2, rank=0)


@pytest.mark.parametrize("name,attention,reason", [
    ("mlp", None, "Sequential is not a Hugging Face model"),
    (NAME, "flex_attention", "_attn_implementation='flex_attention'"),
])
def test_cp_is_refused_where_it_cannot_apply(name: str, attention: str | None,
                                             reason: str) -> None:
    graph = graph_of(name)
    model = build(name)
    if attention is not None:
        model.config._attn_implementation = attention  # type: ignore[union-attr]
    with pytest.raises(ExecutorError, match=rf"cp=2.*{reason}.*constraints=\{{'cp': 1\}}"):
        layout_of(model, make_plan(graph, BATCH, cp=2, dp=2), graph=graph)
