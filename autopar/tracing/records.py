"""``OpRecord``: one captured ATen op with its measured costs, before layers are formed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from autopar.tracing.op_classes import OpClass
from autopar.tracing.tensors import moved_bytes, tensor_bytes

_CALL_SUFFIX = re.compile(r"@(\d+)$")


def clean_module_path(path: str) -> str:
    """Strip export's ``@N`` call-count suffix so every call maps to the module's own path."""
    return _CALL_SUFFIX.sub("", path)


def call_number(key: str) -> int:
    """Export names the N-th extra call of a module ``<key>@N``; the first call is 0."""
    match = _CALL_SUFFIX.search(key)
    return int(match.group(1)) if match else 0


def is_causal(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether an attention op call masks causally (its ``is_causal`` argument): a fused
    kernel then skips the tiles above the diagonal, about half the work."""
    if "is_causal" in kwargs:
        return bool(kwargs["is_causal"])
    schema = getattr(target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    if "is_causal" in names and names.index("is_causal") < len(args):
        return bool(args[names.index("is_causal")])
    return False


@dataclass
class OpRecord:
    """One op of the captured forward graph and what it costs in a training step.

    FLOPs and bytes are for the traced batch; ``saved_bytes`` is what autograd keeps alive for
    backward because of this op (parameters excluded, shared storages counted once).
    """

    name: str
    target: str
    module: str
    module_type: str
    op_class: OpClass
    shape: tuple[int, ...]
    dtype: str
    out_bytes: int
    inputs: list[str] = field(default_factory=list)
    input_bytes: dict[str, int] = field(default_factory=dict)
    arg_shapes: list[tuple[int, ...]] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    fwd_flops: int = 0
    bwd_flops: int = 0
    recompute_flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bwd_bytes: int = 0
    saved_bytes: int = 0
    saved_score_bytes: int = 0
    """Part of ``saved_bytes`` that is attention scores ([..., seq, seq] tensors)."""
    saved_sources: dict[str, int] = field(default_factory=dict)
    """Which op made each tensor this op saved -> its bytes (part of ``saved_bytes``; tensors
    made outside any recorded op, such as model inputs, are left out)."""
    calls: dict[str, int] = field(default_factory=dict)
    """Which call of each module on the op's stack this is, for modules run more than once
    (a shared layer applied at every depth); first calls are left out."""
    routed: bool = False
    causal: bool = False
    """An attention op with a causal mask (``is_causal``)."""
    """Works on the tokens routed to one expert (mixture-of-experts), not on every token."""

    @classmethod
    def measured(cls, *, name: str, target: str, module: str, module_type: str,
                 op_class: OpClass, in_tensors: list[torch.Tensor],
                 out_tensors: list[torch.Tensor], **fields: Any) -> OpRecord:
        """A record whose shape, dtype and bytes come from the op's input and output tensors."""
        read, written = moved_bytes(op_class, in_tensors, out_tensors)
        first = out_tensors[0] if out_tensors else None
        return cls(
            name=name, target=target, module=module, module_type=module_type,
            op_class=op_class,
            shape=tuple(first.shape) if first is not None else (),
            dtype=str(first.dtype).removeprefix("torch.") if first is not None else "",
            out_bytes=sum(tensor_bytes(t) for t in out_tensors),
            arg_shapes=[tuple(t.shape) for t in in_tensors],
            bytes_read=read, bytes_written=written, **fields)

    def signature(self) -> tuple[str, tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """What must match for two ops to be the same op of two identical blocks."""
        return (self.target, self.shape, tuple(self.arg_shapes))

    def renamed(self, name: str, rename: dict[str, str], module: str,
                params: list[str]) -> OpRecord:
        """A copy of this op as it occurs in another block: new id, inputs, module and params."""
        inputs = [rename.get(i, i) for i in self.inputs]
        input_bytes = {rename.get(i, i): b for i, b in self.input_bytes.items()}
        sources = {rename.get(i, i): b for i, b in self.saved_sources.items()}
        return replace(self, name=name, inputs=inputs, input_bytes=input_bytes, module=module,
                       params=params, saved_sources=sources)
