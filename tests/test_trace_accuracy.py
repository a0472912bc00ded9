"""Tracing measures what a real training step does: parameters, FLOPs, saved activations."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import autopar
from tests import models
from tests.reference import real_flops, real_saved_bytes


def _ids(batch: int = 2, seq: int = 32) -> torch.Tensor:
    return torch.randint(0, 512, (batch, seq))


def _lm_case(name: str) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    ids = _ids()
    return models.hf_model(name, device="cpu"), (ids,), {"labels": ids}


def _padded_llama() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """A padding mask from the user: the attention mask is real data and must be kept."""
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    return models.hf_model("llama", device="cpu"), (ids,), {"labels": ids,
                                                             "attention_mask": mask}


def _sliding_window_mistral() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    """A window shorter than the sequence: a constant mask that is not causal, so it stays."""
    import transformers as T

    config = T.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                             sliding_window=8, use_cache=False)
    ids = _ids()
    return T.MistralForCausalLM(config), (ids,), {"labels": ids}


CASES = {
    "mlp": lambda: (models.mlp(), (torch.randn(4, 32),), {}),
    "cnn": lambda: (models.SmallCNN(), (torch.randn(2, 3, 16, 16),), {}),
    "nested": lambda: (models.NestedStages(), (torch.randn(2, 6, 16),), {}),
    "two_tower": lambda: (models.TwoTower(), (torch.randn(2, 5, 24), torch.randn(2, 12)), {}),
    "gpt2": lambda: _lm_case("gpt2"),
    "llama": lambda: _lm_case("llama"),
    "bert": lambda: _lm_case("bert"),
    "llama_padded": _padded_llama,
    "mistral_window": _sliding_window_mistral,
}


@pytest.fixture(params=sorted(CASES), scope="module")
def traced(request: pytest.FixtureRequest) -> tuple[str, nn.Module, Any, Any, autopar.ModelGraph]:
    torch.manual_seed(0)
    model, args, kwargs = CASES[request.param]()
    return request.param, model, args, kwargs, autopar.trace(model, args, kwargs)


def test_parameter_counts_are_exact(traced: Any) -> None:
    _, model, _, _, graph = traced
    total = sum(p.numel() for p in model.parameters())
    assert graph.total_params == total
    assert sum(layer.params for layer in graph.layers) == total
    assert graph.param_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_total_flops_match_flop_counter_on_real_tensors(traced: Any) -> None:
    _, model, args, kwargs, graph = traced
    expected = real_flops(model, args, kwargs)
    measured = graph.hardware_flops * graph.batch_size
    assert expected > 0
    assert measured == pytest.approx(expected, rel=0.01)


def test_saved_activations_match_autograd_per_layer(traced: Any) -> None:
    _, model, args, kwargs, graph = traced
    units = [layer.name for layer in graph.layers if "#" not in layer.name]
    real = real_saved_bytes(model, units, args, kwargs)
    total_real = sum(real.values())
    for layer in graph.layers:
        got = layer.activation_bytes * graph.batch_size
        want = real.get(layer.name, 0)
        # 5% of the layer, or of a hundredth of the model for layers that save next to nothing.
        assert got == pytest.approx(want, rel=0.05, abs=0.0005 * total_real), layer.name
    assert graph.activation_bytes * graph.batch_size == pytest.approx(total_real, rel=0.05)


def test_layers_are_a_valid_pipeline_order(traced: Any) -> None:
    _, _, _, _, graph = traced
    layer_of = dict(graph.graph.nodes(data="layer"))
    assert all(layer_of[u] <= layer_of[v] for u, v in graph.graph.edges)
    assert [layer.index for layer in graph.layers] == list(range(len(graph.layers)))
    for node, data in graph.graph.nodes(data=True):
        assert {"op", "module", "op_class", "fwd_flops", "bwd_flops", "bytes_read",
                "bytes_written", "shape", "dtype", "params"} <= set(data), node
    assert all("bytes" in data for _, _, data in graph.graph.edges(data=True))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_flops_match_the_standard_formula(name: str) -> None:
    """Model FLOPs = 6 * N * tokens + 12 * layers * seq * hidden * tokens (MFU convention)."""
    layers, hidden, batch, seq = 2, 256, 2, 128
    model = models.hf_model(name, layers=layers, hidden=hidden)
    ids = torch.zeros(batch, seq, dtype=torch.long)
    graph = autopar.trace(model, (ids,), {"labels": ids})
    lookup_only = {"transformer.wpe.weight", "model.embed_tokens.weight"}  # no matmul uses them
    n = sum(p.numel() for name_, p in model.named_parameters() if name_ not in lookup_only)
    tokens = batch * seq
    expected = 6 * n * tokens + 12 * layers * seq * hidden * tokens
    measured = (graph.fwd_flops + graph.bwd_flops) * batch
    assert measured == pytest.approx(expected, rel=0.01)


def test_meta_and_cpu_models_cost_the_same() -> None:
    """Export may keep a no-op ``contiguous`` on meta that it drops on CPU: ops can differ by
    such layout no-ops, costs cannot."""
    ids = torch.zeros(2, 16, dtype=torch.long)
    on_meta = autopar.trace(models.hf_model("llama", device="meta"), (ids,), {"labels": ids})
    on_cpu = autopar.trace(models.hf_model("llama", device="cpu"), (ids,), {"labels": ids})
    ignore = {"num_ops", "modules"}
    assert ([lay.model_dump(exclude=ignore) for lay in on_meta.layers]
            == [lay.model_dump(exclude=ignore) for lay in on_cpu.layers])


def test_tracing_a_meta_model_materialises_nothing() -> None:
    model = models.hf_model("llama", hidden=128)
    ids = torch.zeros(1, 64, dtype=torch.long)
    autopar.trace(model, (ids,), {"labels": ids})
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "meta" for b in model.buffers())
