"""Selective recomputation recomputes exactly the attention core (Korthikanti et al. 2022, the
cost model's "selective"): QK^T, the ops on the scores, softmax and attention over V, or one
fused attention kernel; everything else in the layer is saved."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from autopar.executor.ac import AttentionCorePolicy
from tests.executor_util import data, llama, loss_fn

SAVED_IN_ANY_CASE = {"mm", "addmm", "mean", "rsqrt", "pow", "silu", "cos", "sin", "neg", "cat"}
"""Projections, RMSNorm, SwiGLU and rotary embedding ops: outside the attention core."""


class _Recording(AttentionCorePolicy):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.log: list[tuple[str, CheckpointPolicy]] = []

    def __call__(self, ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        decision = super().__call__(ctx, op, *args, **kwargs)
        self.log.append((op.__name__.split(".")[0], decision))
        return decision


def _run(attention: str, selective: bool) -> tuple[list[tuple[str, CheckpointPolicy]],
                                                   list[torch.Tensor]]:
    """One forward/backward of a 2-layer Llama whose layers are checkpointed with the policy:
    the policy's decisions for layer 0 and the gradients."""
    torch.manual_seed(0)
    model = llama(layers=2)
    model.config._attn_implementation = attention
    policies = []
    for layer in model.model.layers:
        policy = _Recording(layer)
        policies.append(policy)
        inner = layer.forward

        def forward(*args: Any, _inner: Any = inner, _policy: Any = policy, **kwargs: Any
                    ) -> Any:
            if not selective:
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs, context_fn=lambda:
                              create_selective_checkpoint_contexts(_policy))

        layer.forward = forward
    x, y = data("llama", 2, 0)
    loss_fn(model(x).logits, y).backward()
    return policies[0].log, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_selective_recomputes_only_the_attention_core(attention: str) -> None:
    log, grads = _run(attention, selective=True)
    _, plain = _run(attention, selective=False)
    assert len(grads) == len(plain)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain, strict=True))
    recomputed = [op for op, d in log if d == CheckpointPolicy.PREFER_RECOMPUTE]
    saved = {op for op, d in log if d == CheckpointPolicy.MUST_SAVE}
    assert {"mm", "mean", "silu"} <= saved
    assert not SAVED_IN_ANY_CASE & set(recomputed)
    fused = [op for op in recomputed if op.startswith("_scaled_dot_product")]
    if fused:  # the attention core is one kernel
        assert recomputed == fused
    else:  # QK^T, the ops on the scores, softmax, AV: and nothing before or after
        assert recomputed.count("bmm") == 2 and "_softmax" in recomputed
        assert recomputed[0] == recomputed[-1] == "bmm"
        core = [i for i, (_, d) in enumerate(log) if d == CheckpointPolicy.PREFER_RECOMPUTE]
        outside = log[:core[0]] + log[core[-1] + 1:]
        assert all(d == CheckpointPolicy.MUST_SAVE for _, d in outside)


def test_a_batched_matmul_with_a_weight_is_saved() -> None:
    experts = torch.nn.Parameter(torch.randn(4, 8, 8))
    module = torch.nn.Module()
    module.experts = experts
    policy = _Recording(module)
    x = torch.randn(4, 3, 8, requires_grad=True)
    out = checkpoint(lambda t: torch.bmm(t, experts).relu(), x, use_reentrant=False,
                     context_fn=lambda: create_selective_checkpoint_contexts(policy))
    out.sum().backward()
    assert ("bmm", CheckpointPolicy.MUST_SAVE) in policy.log
    assert all(d == CheckpointPolicy.MUST_SAVE for _, d in policy.log)
