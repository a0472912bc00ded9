"""The memory model against first principles and against activations measured on CPU."""

from __future__ import annotations

import pytest
import torch
from autopar.cost_models.memory import model_state_bytes, state_bytes_per_param

import autopar
from autopar.config import ConfigError, ParallelConfig
from autopar.layer_profiles import layer_profiles
from tests import models
from tests.reference import real_saved_bytes

N = 1_000_000_007  # parameters, odd so that nothing divides by accident


def test_mixed_precision_adam_is_16_bytes_per_parameter() -> None:
    """ZeRO paper, section 3.1: 2 (fp16 weights) + 2 (fp16 grads) + 12 (fp32 Adam states)."""
    weights, grads, opt = model_state_bytes(N, 0, precision="bf16", optimizer="adamw",
                                            zero_stage=0, dp=8)
    assert weights + grads + opt == pytest.approx(16 * N, rel=1e-12)
    assert state_bytes_per_param("fp32", "adamw") == (4, 4, 8)


@pytest.mark.parametrize("stage,expected", [
    (1, 2 + 2 + 12 / 64),          # optimizer states sharded
    (2, 2 + (2 + 12) / 64),        # and gradients
    (3, (2 + 2 + 12) / 64),        # and weights (plus two gathered layers, below)
])
def test_zero_stages_shard_what_the_paper_says(stage: int, expected: float) -> None:
    weights, grads, opt = model_state_bytes(N, 0, precision="bf16", optimizer="adamw",
                                            zero_stage=stage, dp=64)
    assert weights + grads + opt == pytest.approx(expected * N, rel=1e-9)


def test_zero3_holds_two_gathered_layers() -> None:
    layer = 50_000_000
    weights, _, _ = model_state_bytes(N, layer, precision="bf16", optimizer="adamw",
                                      zero_stage=3, dp=64)
    assert weights == pytest.approx(2 * N / 64 + 2 * 2 * layer)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision='int4'"):
        state_bytes_per_param("int4", "adamw")


def test_activation_memory_matches_what_autograd_saves_on_cpu() -> None:
    """Unsplit (tp=1) layer activations equal the bytes a real CPU step saves, layer by layer,
    when every op is costed as the eager kernel it is (``kernels="eager"``)."""
    torch.manual_seed(0)
    model = models.hf_model("llama", device="cpu")
    ids = torch.randint(0, 512, (2, 32))
    graph = autopar.trace(model, (ids,), {"labels": ids})
    graph.kernels = "eager"
    profiles = layer_profiles(graph)
    real = real_saved_bytes(model, [layer.name for layer in graph.layers], (ids,),
                            {"labels": ids})
    for layer, profile in zip(graph.layers, profiles, strict=True):
        predicted = profile.saved_bytes(tp=1, sequence_parallel=False) * graph.batch_size
        assert predicted == pytest.approx(real.get(layer.name, 0), rel=0.05), layer.name


def test_tensor_parallelism_splits_only_what_it_shards() -> None:
    ids = torch.zeros(2, 32, dtype=torch.long)
    graph = autopar.trace(models.hf_model("llama", hidden=128), ids)
    block = layer_profiles(graph)[1]
    full = block.saved_bytes(tp=1, sequence_parallel=False)
    split = block.saved_bytes(tp=4, sequence_parallel=False)
    assert full / 4 < split < full  # norms and residuals stay replicated without SP
    assert block.saved_bytes(tp=4, sequence_parallel=True) == pytest.approx(full / 4)
    assert block.params_sharded > 10 * block.params_replicated > 0


def test_default_pipeline_split_follows_megatron() -> None:
    is_block = [False, False] + [True] * 8 + [False, False]
    stages = ParallelConfig(pp=4).stage_layers(is_block)
    assert [len(s) for s in stages] == [4, 2, 2, 4]
    assert ParallelConfig(pp=3).stage_layers(is_block)[0] == range(0, 5)
    with pytest.raises(ConfigError, match="only 8 blocks"):
        ParallelConfig(pp=3, virtual_stages=3).stage_layers(is_block)
    with pytest.raises(ConfigError, match="layers_per_stage"):
        ParallelConfig(pp=2, layers_per_stage=(5, 5)).stage_layers(is_block)


def test_default_split_keeps_the_layers_between_blocks() -> None:
    # An encoder-decoder: the encoder's final norm and the decoder's embedding sit between
    # the two runs of blocks, and go with the block before them.
    is_block = [False] + [True] * 4 + [False, False] + [True] * 4 + [False, False]
    for pp in (1, 2, 4):
        stages = ParallelConfig(pp=pp).stage_layers(is_block)
        assert [i for s in stages for i in s] == list(range(len(is_block)))
    assert [len(s) for s in ParallelConfig(pp=2).stage_layers(is_block)] == [7, 6]
    assert [len(s) for s in ParallelConfig(pp=4).stage_layers(is_block)] == [3, 4, 2, 4]


def test_batch_must_split_into_micro_batches() -> None:
    assert ParallelConfig(dp=4, micro_batch_size=2).micro_batches(64) == 8
    with pytest.raises(ConfigError, match="multiple of dp x micro_batch_size = 8"):
        ParallelConfig(dp=4, micro_batch_size=2).micro_batches(60)
