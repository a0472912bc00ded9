"""A model built on the meta device is materialised shard by shard: each rank allocates only
its own shards, initialises them with ``init_weights`` (or the modules' ``reset_parameters``)
and then trains exactly like the same model initialised and trained in one process."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autopar.executor.errors import ExecutorError
from autopar.executor.materialise import materialise
from tests.executor_util import (
    build,
    build_meta,
    compare,
    graph_of,
    index_init,
    make_plan,
    reference_init,
    rel_diff,
    run_ranks,
    train_meta_ranks,
)

BATCH = 8
STEPS = 3
TOLERANCE = 1e-5
CPU = torch.device("cpu")


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(tp=2, dp=2), dict(pp=2, dp=2),
                                    dict(dp=4, zero_stage=3)], ids=["tp2dp2", "pp2dp2", "fsdp4"])
def test_meta_llama_trains_like_one_process(config: dict[str, int]) -> None:
    graph = graph_of("llama")
    plan = make_plan(graph, BATCH, **config)
    ranks = run_ranks(4, train_meta_ranks, "llama", plan, graph, STEPS)
    full = _numel(build_meta("llama"))
    assert all(r["numel"] <= 0.6 * full for r in ranks), [r["numel"] for r in ranks]
    ref = reference_init("llama", BATCH, STEPS)
    model = build("llama")
    with torch.no_grad():
        index_init(model)
    initial = {k: v for r in ranks for k, v in r["initial"].items()}
    assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())
    worst = compare([(r["losses"], r["weights"]) for r in ranks], ref)
    assert worst <= TOLERANCE, f"llama {config} from meta: max relative difference {worst:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("config", [dict(tp=2, dp=2), dict(dp=4, zero_stage=3)],
                         ids=["tp2dp2", "fsdp4"])
def test_meta_model_uses_reset_parameters(config: dict[str, int]) -> None:
    """Each rank draws from its own random stream; replicas still agree."""
    graph = graph_of("mlp")
    plan = make_plan(graph, BATCH, **config)
    ranks = run_ranks(4, train_meta_ranks, "mlp", plan, graph, STEPS, False)
    first = ranks[0]
    for r in ranks[1:]:
        assert r["losses"] == first["losses"]
        for key in ("initial", "weights"):
            assert max(rel_diff(v, first[key][k]) for k, v in r[key].items()) == 0.0
    for key, value in first["initial"].items():
        if key.endswith("weight"):  # nn.Linear: kaiming uniform, bound 1/sqrt(fan_in)
            bound = 1 / math.sqrt(value.shape[1])
            assert value.abs().max() <= bound and value.std() > 0.8 * bound / math.sqrt(3)
    assert first["losses"][-1] < first["losses"][0]
    if config.get("zero_stage"):
        assert all(r["numel"] < _numel(build_meta("mlp")) / 2 for r in ranks)


def test_meta_materialise_keeps_tied_weights_and_fills_them() -> None:
    model = build_meta("gpt2")
    assert materialise(model, CPU, index_init)
    assert model.lm_head.weight is model.transformer.wte.weight
    expected = build("gpt2")
    with torch.no_grad():
        index_init(expected)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.state_dict().items())


def test_meta_model_without_initialiser_is_refused() -> None:
    with pytest.raises(ExecutorError, match=r"LlamaRMSNorm \(model.layers.0.input_layernorm, "
                                            r"9 in all\).*LlamaRotaryEmbedding.*init_weights="):
        materialise(build_meta("llama"), CPU, None)
