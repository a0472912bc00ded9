"""What tracing finds: layers, repeated blocks, experts, TP patterns, fallbacks, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import autopar
import autopar.tracing.tracer as tracer
from autopar.tracing.blocks import analyse
from tests import models


def _trace_lm(model: torch.nn.Module, batch: int = 2, seq: int = 16) -> autopar.ModelGraph:
    ids = torch.zeros(batch, seq, dtype=torch.long)
    return autopar.trace(model, (ids,), {"labels": ids})


def _trace_without_dedup(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module,
                         *args: object, **kwargs: object) -> autopar.ModelGraph:
    def no_runs(m: torch.nn.Module):  # type: ignore[no-untyped-def]
        structure = analyse(m)
        structure.runs = []
        return structure

    with monkeypatch.context() as patch:
        patch.setattr(tracer, "analyse", no_runs)
        return autopar.trace(model, *args, **kwargs)


# -- repeated blocks ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_copied_blocks_equal_a_full_depth_trace(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    model = models.hf_model(name, layers=6)
    ids = torch.zeros(2, 16, dtype=torch.long)
    fast = autopar.trace(model, (ids,), {"labels": ids})
    full = _trace_without_dedup(monkeypatch, model, (ids,), {"labels": ids})
    assert sum(layer.repeat_of is not None for layer in fast.layers) == 4
    assert all(layer.repeat_of is None for layer in full.layers)
    ignore = {"repeat_of"}
    assert ([lay.model_dump(exclude=ignore) for lay in fast.layers]
            == [lay.model_dump(exclude=ignore) for lay in full.layers])
    assert fast.graph.number_of_nodes() == full.graph.number_of_nodes()
    assert fast.graph.number_of_edges() == full.graph.number_of_edges()


def test_repeated_blocks_share_a_signature_and_different_blocks_do_not() -> None:
    graph = autopar.trace(models.NestedStages(), torch.randn(2, 6, 16))
    blocks = [layer for layer in graph.layers if layer.name.startswith("stages.")]
    assert [b.name for b in blocks] == [f"stages.0.{i}" for i in range(3)] + [
        f"stages.1.{i}" for i in range(4)]
    assert len({b.signature for b in blocks[:3]}) == 1
    assert len({b.signature for b in blocks[3:]}) == 1
    assert blocks[0].signature != blocks[3].signature
    assert blocks[2].repeat_of == blocks[1].index and blocks[6].repeat_of == blocks[4].index


def test_layers_of_common_architectures() -> None:
    names = [layer.name for layer in _trace_lm(models.hf_model("llama")).layers]
    assert names == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2",
                     "model.norm", "lm_head"]
    cnn = autopar.trace(models.SmallCNN(), torch.randn(2, 3, 16, 16))
    assert [layer.name for layer in cnn.layers] == [
        "features.0", "features.1", "features.4", "features.5", "head"]


# -- tensor-parallel patterns ---------------------------------------------------------------------

def _patterns(layer: autopar.Layer, kind: str) -> list[autopar.TPPattern]:
    return [p for p in layer.tp_patterns if p.kind == kind]


def test_llama_patterns_with_grouped_query_attention() -> None:
    graph = _trace_lm(models.hf_model("llama", hidden=128))  # 8 heads, 2 KV heads
    block = graph.layer("model.layers.1")
    pairs = {p.modules for p in _patterns(block, "column_row")}
    prefix = "model.layers.1."
    assert pairs == {
        tuple(prefix + m for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                   "self_attn.o_proj")),
        tuple(prefix + m for m in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
    }
    (attention,) = _patterns(block, "attention")
    assert (attention.size, attention.kv_heads, attention.head_dim) == (8, 2, 16)
    assert _patterns(graph.layer("model.embed_tokens"), "vocab_embedding")[0].size == 512
    assert _patterns(graph.layer("lm_head"), "vocab_head")[0].size == 512


def test_gpt2_fused_qkv_and_bert_patterns() -> None:
    gpt2 = _trace_lm(models.hf_model("gpt2")).layer("transformer.h.0")
    assert {p.modules[-1] for p in _patterns(gpt2, "column_row")} == {
        "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"}
    (attention,) = _patterns(gpt2, "attention")
    assert attention.kv_heads == attention.size == 4
    bert = _trace_lm(models.hf_model("bert")).layer("bert.encoder.layer.0")
    assert {p.modules[-1] for p in _patterns(bert, "column_row")} == {
        "bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"}


# -- mixture of experts ---------------------------------------------------------------------------

def _expert_flops_per_sample(tokens: int, width: int, hidden: int, top_k: int) -> int:
    """Each token visits top_k experts, each two matmuls of width x hidden."""
    return tokens * top_k * 2 * (2 * width * hidden)


def test_moe_experts_are_costed_at_their_expected_load() -> None:
    seq, width, hidden, experts, top_k = 16, 32, 64, 8, 2
    model = models.TinyMoE().to("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = autopar.trace(model, torch.zeros(2, seq, dtype=torch.long))
    fallbacks = [w for w in caught if issubclass(w.category, autopar.TraceFallbackWarning)]
    assert len(fallbacks) == 1 and "blocks.0" in str(fallbacks[0].message)
    block = graph.layer("blocks.1")
    router = 2 * seq * width * experts
    expected = router + _expert_flops_per_sample(seq, width, hidden, top_k)
    assert block.fwd_flops == pytest.approx(expected, rel=1e-6)
    assert block.bwd_flops == pytest.approx(2 * expected, rel=0.05)
    expert_params = experts * 2 * width * hidden
    assert block.params == expert_params + width * experts + 2 * width
    assert block.active_params == expert_params * top_k // experts + width * experts + 2 * width
    (pattern,) = _patterns(block, "experts")
    assert (pattern.size, pattern.top_k) == (experts, top_k)
    assert graph.active_params < graph.total_params


@pytest.mark.parametrize("implementation,dtype", [("eager", torch.float32),
                                                  ("grouped_mm", torch.bfloat16),
                                                  ("grouped_mm", torch.float32)])
def test_hf_mixtral_experts_under_each_kernel(implementation: str, dtype: torch.dtype) -> None:
    import transformers as T

    width, hidden, experts, top_k, seq = 64, 96, 4, 2, 16
    config = T.MixtralConfig(hidden_size=width, intermediate_size=hidden, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                             num_local_experts=experts, num_experts_per_tok=top_k,
                             use_cache=False)
    config._experts_implementation = implementation
    with torch.device("meta"):
        model = T.MixtralForCausalLM(config).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autopar.TraceFallbackWarning)
        graph = _trace_lm(model, seq=seq)
    block = graph.layer("model.layers.0")
    attention = 2 * seq * (2 * width * width + 2 * width * 32) + 4 * seq * seq * width
    router = 2 * seq * width * experts
    swiglu = seq * top_k * 2 * (3 * width * hidden)
    assert block.fwd_flops == pytest.approx(attention + router + swiglu, rel=1e-6)
    expert_params = experts * 3 * width * hidden
    assert block.params - block.active_params == expert_params * (experts - top_k) // experts


# -- fallback and errors --------------------------------------------------------------------------

def test_fallback_path_warns_once_and_costs_like_export() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = autopar.trace(models.CustomOutput(), torch.randn(4, 32))
    assert fallback.capture == "module-hooks"
    messages = [str(w.message) for w in caught if w.category is autopar.TraceFallbackWarning]
    assert len(messages) == 1 and "CustomOutput" in messages[0]
    exported = autopar.trace(models.mlp(), torch.randn(4, 32))
    assert exported.capture == "export"
    assert fallback.total_params == exported.total_params
    assert fallback.fwd_flops == exported.fwd_flops
    assert fallback.bwd_flops == exported.bwd_flops
    assert fallback.activation_bytes == pytest.approx(exported.activation_bytes, rel=0.01)


def test_data_dependent_control_flow_raises_trace_error_naming_module_and_op() -> None:
    with pytest.raises(autopar.TraceError) as info:
        autopar.trace(models.DataDependent(), torch.randn(2, 8))
    assert info.value.module == ""  # the branch is in the top-level forward
    assert "DataDependent" in str(info.value) and "torch.cond" in str(info.value)
    assert "_local_scalar_dense" in info.value.op

    nested = torch.nn.Sequential(torch.nn.Linear(8, 8), models.DataDependent())
    with pytest.raises(autopar.TraceError) as info:
        autopar.trace(nested, torch.randn(2, 8))
    assert info.value.module == "1" and "module '1' (DataDependent)" in str(info.value)


def test_inputs_the_model_rejects_raise_input_error() -> None:
    with pytest.raises(autopar.InputError, match=r"'0' \(Linear\).*\[4, 31\]"):
        autopar.trace(models.mlp(), torch.randn(4, 31))


def test_models_without_parameters_are_refused() -> None:
    with pytest.raises(autopar.InputError, match="no parameters"):
        autopar.trace(torch.nn.ReLU(), torch.randn(2, 3))
    with pytest.raises(autopar.InputError, match="nn.Module"):
        autopar.trace(lambda x: x, torch.randn(2, 3))  # type: ignore[arg-type]


def test_failed_capture_leaves_the_model_as_it_was() -> None:
    model = models.DataDependent()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with pytest.raises(autopar.TraceError):
        autopar.trace(model, torch.randn(2, 8))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- architectures the issue does not name ---------------------------------------------------------

def _other_hf_models() -> dict[str, object]:
    import transformers as T

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                 max_position_embeddings=128)
    return {
        "Qwen2ForCausalLM": T.Qwen2Config(**small),
        "Gemma2ForCausalLM": T.Gemma2Config(**small, head_dim=16),
        "Phi3ForCausalLM": T.Phi3Config(**small, pad_token_id=0),
        "GPTNeoXForCausalLM": T.GPTNeoXConfig(hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=3, num_attention_heads=4,
                                              vocab_size=300),
        "OPTForCausalLM": T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=3,
                                      num_attention_heads=4, vocab_size=300,
                                      word_embed_proj_dim=64),
        "T5ForConditionalGeneration": T.T5Config(d_model=64, d_ff=128, num_layers=3,
                                                 num_heads=4, d_kv=16, vocab_size=300,
                                                 decoder_start_token_id=0, pad_token_id=0),
        "BartForConditionalGeneration": T.BartConfig(
            d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_layers=2,
            decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            vocab_size=300, max_position_embeddings=128),
        "Qwen2MoeForCausalLM": T.Qwen2MoeConfig(**small, num_experts=4, num_experts_per_tok=2,
                                                moe_intermediate_size=64,
                                                shared_expert_intermediate_size=128),
        "DeepseekV3ForCausalLM": T.DeepseekV3Config(
            **{**small, "num_hidden_layers": 4, "num_key_value_heads": 4}, n_routed_experts=8,
            num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=16, n_group=2, topk_group=1),
        "AlbertForMaskedLM": T.AlbertConfig(hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=4, num_attention_heads=4,
                                            vocab_size=300, embedding_size=32),
    }


@pytest.mark.parametrize("architecture", sorted(_other_hf_models()))
def test_other_hugging_face_architectures(architecture: str) -> None:
    import transformers as T

    config = _other_hf_models()[architecture]
    config.use_cache = False  # type: ignore[attr-defined]
    with torch.device("meta"):
        model = getattr(T, architecture)(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autopar.TraceFallbackWarning)
        graph = _trace_lm(model)
    total = sum(p.numel() for p in model.parameters())
    assert graph.total_params == total == sum(layer.params for layer in graph.layers)
    layer_of = dict(graph.graph.nodes(data="layer"))
    assert all(layer_of[u] <= layer_of[v] for u, v in graph.graph.edges)
    assert graph.fwd_flops > 0 and graph.bwd_flops >= graph.fwd_flops
    assert graph.activation_bytes > 0
    assert any(p.kind == "column_row" for layer in graph.layers for p in layer.tp_patterns)


def test_an_encoder_decoder_plans_from_keyword_inputs() -> None:
    """T5's encoder final norm and decoder embedding sit between its two runs of blocks: the
    plan's stages hold every layer (they once lost the last two). The keyword inputs go to
    ``trace`` as a dict (``plan`` hands its ``example_inputs`` to it as they are)."""
    import transformers as T

    config = _other_hf_models()["T5ForConditionalGeneration"]
    config.use_cache = False  # type: ignore[attr-defined]
    with torch.device("meta"):
        model = T.T5ForConditionalGeneration(config)
    ids = torch.zeros(2, 16, dtype=torch.long)
    inputs = {"input_ids": ids, "decoder_input_ids": ids[:, :8]}
    graph = autopar.trace(model, inputs)
    cluster = autopar.Cluster.from_profile("dgx-a100", nodes=1)
    for pp in (1, 2):
        plan = autopar.plan(graph, cluster, global_batch_size=8, constraints={"pp": pp})
        held = [name for stage in plan.stages for chunk in stage.chunks for name in chunk.layers]
        assert sorted(held) == sorted(layer.name for layer in graph.layers)
        assert plan.estimate == autopar.estimate(graph, cluster, plan.config,
                                                 global_batch_size=8)
    with pytest.raises(autopar.InputError, match="example_kwargs"):
        autopar.trace(model, inputs, {"labels": ids})


def test_a_shared_layer_called_at_every_depth_is_one_layer_per_call() -> None:
    import transformers as T

    config = T.AlbertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, vocab_size=300, embedding_size=32)
    with torch.device("meta"):
        model = T.AlbertForMaskedLM(config)
    graph = _trace_lm(model)
    shared = "albert.encoder.albert_layer_groups.0"
    calls = [layer for layer in graph.layers if layer.name.startswith(shared)]
    assert [layer.name for layer in calls] == [shared, f"{shared}#2", f"{shared}#3", f"{shared}#4"]
    assert calls[0].params > 0 and all(layer.params == 0 for layer in calls[1:])
    assert len({layer.fwd_flops for layer in calls}) == 1 and calls[0].fwd_flops > 0


@pytest.mark.parametrize("architecture", ["WhisperForConditionalGeneration", "CLIPModel",
                                          "ResNetForImageClassification"])
def test_models_with_other_inputs(architecture: str) -> None:
    import transformers as T

    ids = torch.zeros(2, 16, dtype=torch.long)
    cases = {
        "WhisperForConditionalGeneration": (T.WhisperConfig(
            d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=300,
            num_mel_bins=16, max_source_positions=32, max_target_positions=32,
            decoder_start_token_id=0, pad_token_id=0), (torch.zeros(2, 16, 64),), {"labels": ids}),
        "CLIPModel": (T.CLIPConfig(
            text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, vocab_size=300, max_position_embeddings=32),
            vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, image_size=32, patch_size=8)),
            (ids,), {"pixel_values": torch.zeros(2, 3, 32, 32), "return_loss": True}),
        "ResNetForImageClassification": (T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[3, 2], num_labels=10),
            (torch.zeros(2, 3, 32, 32),), {}),
    }
    config, args, kwargs = cases[architecture]
    with torch.device("meta"):
        model = getattr(T, architecture)(config)
    graph = autopar.trace(model, args, kwargs)
    assert graph.total_params == sum(p.numel() for p in model.parameters())
    layer_of = dict(graph.graph.nodes(data="layer"))
    assert all(layer_of[u] <= layer_of[v] for u, v in graph.graph.edges)
    assert graph.fwd_flops > 0 and graph.activation_bytes > 0
    if architecture == "ResNetForImageClassification":  # a stage of 3 blocks opens up
        names = [layer.name for layer in graph.layers]
        assert [n for n in names if n.startswith("resnet.encoder.stages.0.")] == [
            f"resnet.encoder.stages.0.layers.{i}" for i in range(3)]


def _moe_config(architecture: str):  # type: ignore[no-untyped-def]
    import transformers as T

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=128)
    return {
        "Qwen3MoeForCausalLM": lambda: T.Qwen3MoeConfig(
            **small, intermediate_size=128, num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=64, head_dim=16),
        "OlmoeForCausalLM": lambda: T.OlmoeConfig(**small, intermediate_size=64, num_experts=8,
                                                  num_experts_per_tok=2),
        "GptOssForCausalLM": lambda: T.GptOssConfig(
            **small, intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
            head_dim=16, layer_types=["full_attention"] * 2),
        "DeepseekV3ForCausalLM": lambda: T.DeepseekV3Config(  # group-limited routing, MLA
            **{**small, "num_key_value_heads": 4}, intermediate_size=128, n_routed_experts=8,
            num_experts_per_tok=2, moe_intermediate_size=64, first_k_dense_replace=0,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=16, n_group=2, topk_group=1),
    }[architecture]()


@pytest.mark.parametrize("architecture", ["Qwen3MoeForCausalLM", "OlmoeForCausalLM",
                                          "GptOssForCausalLM", "DeepseekV3ForCausalLM"])
def test_hf_moe_families_cost_experts_at_expected_load(architecture: str) -> None:
    """Per token, a MoE layer does ~2 FLOPs per *active* parameter (plus a little attention):
    experts costed for every token would give ~E/k times that, experts costed for none less."""
    import transformers as T

    config = _moe_config(architecture)
    config.use_cache = False
    with torch.device("meta"):
        model = getattr(T, architecture)(config)
    seq = 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autopar.TraceFallbackWarning)
        graph = _trace_lm(model, batch=1, seq=seq)
    moe = [layer for layer in graph.layers if _patterns(layer, "experts")]
    assert len(moe) == 2
    for layer in moe:
        (pattern,) = _patterns(layer, "experts")
        assert (pattern.size, pattern.top_k) == (8, 2)
        assert layer.active_params < layer.params
        assert 1.0 <= layer.fwd_flops / (2 * seq * layer.active_params) <= 1.2
