"""Context parallelism: each cp rank holds a part of every sequence; attention all-gathers K/V.

Every op but attention is position-wise, so a rank runs the model on its own tokens. For
attention, each rank gathers the keys and values of the whole sequence from its cp group
(one differentiable all-gather per layer, of K and V stacked; its backward reduce-scatters
their gradients back to the owners) and computes its own queries against them with the causal
mask of their global positions. This is Llama 3's all-gather context parallelism (Grattafiori
et al. 2024, section 3.3.2), not a ring: PyTorch's ring attention
(``torch.distributed.tensor.experimental.context_parallel``) dispatches only the CUDA flash,
memory-efficient and cuDNN kernels and takes no mask.

The sequence is split load-balanced ("zig-zag"): into ``2 * cp`` equal chunks, rank ``r``
holding chunks ``r`` and ``2 * cp - 1 - r``, so every rank has the same causal work. Each rank
passes the global positions of its tokens as ``position_ids`` (rotary embeddings).

The attention function is plugged in through transformers' attention-function registry: an
implementation is registered per model and named in ``config._attn_implementation``. The
model's own mask construction then returns no mask (the name has no mask function), and the
gathered attention runs ``sdpa_attention_forward`` with its own mask. Models whose attention
does not go through the registry are refused (``cp_refusal``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from autopar.executor.errors import ExecutorError

_BASES = ("sdpa", "eager")
"""Attention implementations the gathered attention replaces (eager runs as SDPA: the same
softmax(QK^T)V, fused)."""
_NO_CP = "plan with constraints={'cp': 1}"


def sequence_positions(seq: int, cp: int, rank: int) -> torch.Tensor:
    """The global positions of the tokens cp rank ``rank`` holds: chunks ``rank`` and
    ``2 * cp - 1 - rank`` of ``2 * cp`` equal chunks, so that causal attention costs every rank
    the same (an early chunk attends to little, its partner to almost everything)."""
    if seq % (2 * cp):
        raise ExecutorError(f"context parallelism cp={cp} splits each sequence into 2*cp = "
                            f"{2 * cp} equal chunks, but the batch's sequence length is {seq}; "
                            f"use a sequence length divisible by {2 * cp} or {_NO_CP}")
    n = seq // (2 * cp)
    late = 2 * cp - 1 - rank
    return torch.cat([torch.arange(rank * n, (rank + 1) * n), torch.arange(late * n, late * n + n)])


def cp_refusal(model: nn.Module) -> str | None:
    """Why the executor cannot apply context parallelism to ``model``, or None."""
    from transformers import PreTrainedConfig

    config = getattr(model, "config", None)
    name = type(model).__name__
    if not isinstance(config, PreTrainedConfig) or not getattr(
            model, "_supports_attention_backend", False):
        return (f"{name} is not a Hugging Face model whose attention goes through transformers' "
                "attention-function registry")
    if config.is_encoder_decoder:
        return f"{name} is an encoder-decoder model"
    impl = config._attn_implementation
    if impl not in _BASES:
        return (f"{name} has config._attn_implementation={impl!r}; context parallelism replaces "
                "'sdpa' or 'eager' (load the model with attn_implementation='sdpa')")
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return f"{name}.forward takes no position_ids"
    return None


def check_cp(model: nn.Module, cp: int) -> None:
    """Refuse a plan with ``cp > 1`` for a model the executor cannot apply it to."""
    reason = cp_refusal(model) if cp > 1 else None
    if reason is not None:
        raise ExecutorError(f"context parallelism (cp={cp}) needs a Hugging Face decoder with "
                            f"SDPA or eager attention: {reason}; {_NO_CP}")


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0, whose backward reduce-scatters: each rank's keys and values are
    used by every rank's queries, so their gradient is the sum of every rank's part of it.
    (``torch.distributed.nn.functional.all_gather`` emulates the reduce-scatter on gloo with
    scatters addressed by group rank as if it were the global rank, which fails in a
    subgroup.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def gather_kv(key: torch.Tensor, value: torch.Tensor, group: dist.ProcessGroup
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[batch, heads, tokens, dim]`` of every rank of ``group``, in one
    collective, concatenated along the tokens in group-rank order."""
    stacked = _AllGather.apply(torch.stack([key, value]), group)
    cp = stacked.shape[0] // 2
    b, h, s, d = key.shape
    kv = stacked.view(cp, 2, b, h, s, d).permute(1, 2, 3, 0, 4, 5).reshape(2, b, h, cp * s, d)
    return kv[0], kv[1]


class GatheredAttention:
    """The attention function of one model under cp: gather K/V over the cp group, attend this
    rank's queries to them under the causal mask of their global positions."""

    def __init__(self, mesh: DeviceMesh) -> None:
        self.group = mesh.get_group()
        self.cp = mesh.size()
        self.rank = mesh.get_local_rank()
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def prepare(self, _: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of the model: build the mask of this call's length before any
        layer runs. Inside a selectively recomputed layer, building it on first use would run
        ops in the forward that its recompute (a cache hit) does not, and the recompute would
        replay the saved outputs of those ops in place of others."""
        positions = kwargs.get("position_ids")
        if isinstance(positions, torch.Tensor):
            self.mask(positions.shape[-1], positions.device)

    def mask(self, local: int, device: torch.device) -> torch.Tensor:
        """``[1, 1, local, cp * local]``: may query ``i`` (this rank's ``i``-th token) attend to
        gathered key ``j`` (rank ``j // local``'s ``j % local``-th token)."""
        key = (local, device)
        if key not in self._masks:
            seq = local * self.cp
            q = sequence_positions(seq, self.cp, self.rank)
            k = torch.cat([sequence_positions(seq, self.cp, r) for r in range(self.cp)])
            self._masks[key] = (k[None, :] <= q[:, None]).to(device)[None, None]
        return self._masks[key]

    def __call__(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any
                 ) -> tuple[torch.Tensor, None]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is not None or kwargs.get("sliding_window") is not None:
            raise ExecutorError(f"{type(module).__name__} passed an attention mask or a sliding "
                                "window; context parallelism applies only the causal mask of "
                                f"whole sequences; {_NO_CP}")
        key, value = gather_kv(key, value, self.group)
        causal = kwargs.pop("is_causal", None)
        causal = getattr(module, "is_causal", True) if causal is None else causal
        mask = self.mask(query.shape[2], query.device) if causal else None
        return sdpa_attention_forward(module, query, key, value, mask, is_causal=False,
                                      **kwargs)


def apply_cp(root: nn.Module, mesh: DeviceMesh) -> None:
    """Make the attention of ``root`` (the model or one pipeline chunk's copy of it) gather K/V
    over the cp mesh (a no-op for cp = 1): register a ``GatheredAttention`` and name it in every
    config of the module tree."""
    if mesh.size() == 1:
        return
    from transformers import AttentionInterface, PreTrainedConfig

    attention = GatheredAttention(mesh)
    name = f"autopar_cp_{id(attention)}"
    AttentionInterface.register(name, attention)
    root.register_forward_pre_hook(attention.prepare, with_kwargs=True)
    configs = {id(c): c for m in root.modules()
               if isinstance(c := getattr(m, "config", None), PreTrainedConfig)}
    for config in configs.values():
        config._attn_implementation = name


def shard_sequence(inputs: dict[str, Any], target: torch.Tensor, cp: int, rank: int
                   ) -> tuple[dict[str, Any], torch.Tensor]:
    """This cp rank's tokens of a batch: every input tensor and the target with the target's
    sequence length in dim 1 are cut to the rank's positions, and ``position_ids`` (the
    user's, cut the same way, or the global positions) tell the model where they lie."""
    if "attention_mask" in inputs:
        raise ExecutorError("context parallelism applies only the causal mask of whole "
                            "sequences: batches with an attention_mask (padding) are not "
                            f"supported; pack sequences without padding or {_NO_CP}")
    if target.dim() < 2:
        raise ExecutorError(f"context parallelism splits the sequence (dim 1), but the target "
                            f"has shape {tuple(target.shape)}; {_NO_CP}")
    seq = int(target.shape[1])
    index = sequence_positions(seq, cp, rank).to(target.device)
    cut = {k: v.index_select(1, index) if isinstance(v, torch.Tensor) and v.dim() > 1
           and v.shape[1] == seq else v for k, v in inputs.items()}
    if "position_ids" not in cut:
        cut["position_ids"] = index.expand(target.shape[0], -1)
    return cut, target.index_select(1, index)
