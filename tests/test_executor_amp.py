"""Mixed precision outside FSDP: a bf16 plan runs its matrix products in bfloat16 under
``torch.autocast`` (float32 master weights and gradient reduction) under DDP, tensor and
pipeline parallelism, and trains like one process under CPU autocast to bfloat16."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

import autopar
from autopar.executor.amp import compute_dtype
from autopar.executor.errors import ExecutorError
from autopar.plan import Plan
from tests.executor_util import build as build_model
from tests.executor_util import (
    compare,
    graph_of,
    make_plan,
    reference,
    run_ranks,
    train_parallel,
)

GLOBAL_BATCH = 8
STEPS = 3
LOSS_TOLERANCE = 2.0**-8
WEIGHT_TOLERANCE = 2.0**-6
"""Relative tolerances for bf16 runs. bfloat16 keeps 8 significant bits (unit roundoff
2^-8 = 3.9e-3). The parallel runs round other partial results to bfloat16 than the one
process does (a tensor-parallel row layer rounds each rank's partial product before the
all-reduce; a data-parallel replica or a pipeline micro-batch multiplies a smaller matrix,
blocked differently; FSDP casts every weight, the one process only the matmuls' operands), so
a matmul output may differ by a rounding. A loss is a mean over many tokens and stays within
one rounding (2^-8; measured up to 3.6e-5, GPT-2 tp2). A weight is its initial value plus 3
updates: a weight initialised to zero (GPT-2's biases, norm biases) is nothing but the sum of 3
gradients, each the end of a chain of bf16-rounded products, so its relative difference is
the gradients' own, a few roundings: 2^-6 = 1.6e-2 (4 roundings). Measured on weights: 5.5e-4
(Llama dp2, pp2), 8.4e-4 (Llama tp2), 1.0e-3 (Llama FSDP x 2), 6.3e-3 (GPT-2 tp2; GPT-2 dp2:
4.7e-3). The float32 tests' 1e-5 is far below one bfloat16 rounding. The one-process bf16 and
float32 runs themselves differ by 7.9e-4 (Llama), so it is the output-dtype check that tells
the precisions apart here, the tolerances that tell a broken parallel step (1e-1 and more)
from rounding."""


def _worst(results: list[tuple[list[float], dict[str, torch.Tensor]]],
           ref: tuple[list[float], dict[str, torch.Tensor]]) -> tuple[float, float]:
    """The largest relative difference of the losses, and of the final weights."""
    losses = max(abs(a - b) / abs(b) for r in results
                 for a, b in zip(r[0], ref[0], strict=True))
    weights = compare([([], w) for _, w in results], ([], ref[1]))
    return losses, weights


def _linear_dtypes(model: nn.Module) -> set[torch.dtype]:
    """Record the output dtype of every linear layer (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    seen: set[torch.dtype] = set()

    def hook(_m: nn.Module, _a: Any, out: Any) -> None:
        value = out.to_local() if hasattr(out, "to_local") else out
        seen.add(value.dtype)

    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            module.register_forward_hook(hook)
    return seen


def _train_bf16(rank: int, name: str, plan: Plan, graph: autopar.ModelGraph, steps: int
                ) -> tuple[list[float], dict[str, torch.Tensor], set[torch.dtype],
                           set[torch.dtype]]:
    pm = autopar.parallelize(build_model(name), plan, graph=graph)
    sets = [_linear_dtypes(m) for m in pm.modules()]
    losses, weights = train_parallel(pm, name, plan, steps)
    params = {(p.to_local() if hasattr(p, "to_local") else p).dtype for p in pm.parameters()}
    return losses, weights, set().union(*sets), params


@functools.cache
def _graph(name: str) -> autopar.ModelGraph:
    return graph_of(name)


@functools.cache
def _reference(name: str, autocast: torch.dtype | None
               ) -> tuple[list[float], dict[str, torch.Tensor]]:
    return reference(name, GLOBAL_BATCH, STEPS, autocast=autocast)


@pytest.mark.slow
@pytest.mark.parametrize("name,config", [("llama", dict(dp=2)), ("llama", dict(tp=2)),
                                         ("llama", dict(pp=2)),
                                         ("llama", dict(dp=2, zero_stage=3)),
                                         ("gpt2", dict(tp=2))],
                         ids=["dp2", "tp2", "pp2", "fsdp2", "gpt2-tp2"])
def test_bf16_plan_runs_matmuls_in_bf16(name: str, config: dict[str, int]) -> None:
    """DDP, tensor and pipeline parallelism run under autocast, FSDP under its policy: every
    linear layer's output is bfloat16, every parameter a float32 master weight."""
    graph = _graph(name)
    plan = make_plan(graph, GLOBAL_BATCH, precision="bf16", **config)
    ranks = run_ranks(plan.world_size, _train_bf16, name, plan, graph, STEPS)
    for _, _, outputs, params in ranks:
        assert outputs == {torch.bfloat16}, outputs
        assert params == {torch.float32}, params  # float32 master weights
    losses, weights = _worst([r[:2] for r in ranks], _reference(name, torch.bfloat16))
    assert losses <= LOSS_TOLERANCE, f"{name} {config} bf16: losses differ by {losses:.2e}"
    assert weights <= WEIGHT_TOLERANCE, f"{name} {config} bf16: weights differ by {weights:.2e}"


def test_fp16_is_refused() -> None:
    with pytest.raises(ExecutorError, match="fp16.*loss scaling.*precision='bf16'"):
        compute_dtype("fp16")
    assert compute_dtype("fp32") is None and compute_dtype("bf16") is torch.bfloat16
