"""Rewrite an exported graph where tracing changed what the model does.

Some models branch on "am I being traced?". Hugging Face's attention-mask code is the one that
matters. Run eagerly without padding, it passes no mask to ``scaled_dot_product_attention`` and
asks for ``is_causal=True``. Under ``torch.export`` it cannot prove the mask is causal, so it
builds a [batch, 1, seq, seq] mask and passes it. That adds O(seq²) bytes per layer that a real
step never saves for backward (64 MB per layer per sample at 4k tokens). This pass turns such
calls back into what eager execution runs.

A mask qualifies only if it is *static*: computed from nothing but constants (no user input,
no parameter, no buffer), for self-attention, and exactly lower-triangular when evaluated.
Padding masks and sliding windows are left alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

_SDPA = torch.ops.aten.scaled_dot_product_attention.default
_EVALUATE_LIMIT = 1 << 26  # elements of the mask; larger masks are assumed causal (see below)


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.device) and x.type == "meta":
        return torch.device("cpu")
    return x


def _ancestors(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """The nodes ``node`` is computed from, in graph order; None if any is a placeholder."""
    seen: set[torch.fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        if n.op == "placeholder":
            return None
        seen.add(n)
        stack.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def _evaluate(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node]) -> Any:
    """Compute the last of ``nodes`` on real CPU tensors (they depend on constants only)."""
    env: dict[torch.fx.Node, Any] = {}
    for n in nodes:
        args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
        args = torch.fx.node.map_aggregate(args, _to_cpu)
        kwargs = torch.fx.node.map_aggregate(kwargs, _to_cpu)
        if n.op == "get_attr":
            env[n] = getattr(gm, str(n.target))
        elif n.op == "call_function" and callable(n.target):
            env[n] = n.target(*args, **kwargs)
        else:
            raise ValueError(f"cannot evaluate {n.op} node {n.name}")
    return env[nodes[-1]]


def _is_causal(mask: Any, q_len: int) -> bool:
    if not isinstance(mask, torch.Tensor) or mask.shape[-2:] != (q_len, q_len):
        return False
    allowed = mask if mask.dtype == torch.bool else mask == 0
    causal = torch.ones(q_len, q_len, dtype=torch.bool).tril()
    return bool((allowed == causal).all())


def _static_causal_mask(gm: torch.fx.GraphModule, node: torch.fx.Node,
                        checked: dict[tuple[torch.fx.Node, int], bool]) -> bool:
    """Whether ``node`` (an sdpa call) takes a constant, causal mask over self-attention.
    ``checked`` remembers the answer per (mask node, query length): every layer of a model
    usually shares one mask, which is evaluated once."""
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if not isinstance(mask, torch.fx.Node):
        return False
    query, key = (a.meta.get("val") for a in node.args[:2])  # type: ignore[union-attr]
    if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        return False
    q_len = query.shape[-2]
    if q_len != key.shape[-2]:
        return False
    if (mask, q_len) not in checked:
        checked[(mask, q_len)] = _constant_causal(gm, mask, q_len)
    return checked[(mask, q_len)]


def _constant_causal(gm: torch.fx.GraphModule, mask: torch.fx.Node, q_len: int) -> bool:
    """Whether ``mask`` is computed from constants only and is the causal mask."""
    nodes = _ancestors(mask)
    if nodes is None:
        return False
    value = mask.meta.get("val")
    if value is not None and value.numel() > _EVALUATE_LIMIT:
        # Too large to check here; a constant self-attention mask is the causal mask in
        # practice (a sliding window this long would be costed without its mask).
        return True
    try:
        return _is_causal(_evaluate(gm, nodes), q_len)
    except Exception:  # noqa: BLE001 - unevaluable: keep the mask, it is what export saw
        return False


def eager_causal_attention(gm: torch.fx.GraphModule) -> int:
    """Replace static causal masks of sdpa calls by ``is_causal=True``; returns how many."""
    rewritten = 0
    checked: dict[tuple[torch.fx.Node, int], bool] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _SDPA:
            continue
        if not _static_causal_mask(gm, node, checked):
            continue
        args = list(node.args)
        kwargs = dict(node.kwargs)
        dropout = args[4] if len(args) > 4 else kwargs.pop("dropout_p", 0.0)
        kwargs.pop("attn_mask", None)
        kwargs.pop("is_causal", None)
        node.args = (*args[:3], None, dropout, True)
        node.kwargs = kwargs
        rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return rewritten
