"""``ModelGraph``: the costed ATen graph of one training step and its ordered pipeline layers."""

from __future__ import annotations

from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field


class TPPattern(BaseModel):
    """A tensor-parallel opportunity found inside a layer.

    - ``column_row``: ``modules[:-1]`` can be split by output features (column-parallel) and
      ``modules[-1]`` by input features (row-parallel) with one reduction after it
      (attention QKV -> out, MLP up/gate -> down).
    - ``attention``: ``size`` query heads and ``kv_heads`` key/value heads of ``head_dim``,
      split across ranks head-wise.
    - ``vocab_embedding`` / ``vocab_head``: an embedding or output projection over a
      vocabulary of ``size`` rows, split by vocabulary.
    - ``experts``: ``size`` experts with ``top_k`` routing, split across ranks expert-wise.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["column_row", "attention", "vocab_embedding", "vocab_head", "experts"]
    modules: tuple[str, ...]
    size: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    top_k: int = 0

    def describe(self, strip: str = "") -> str:
        """A compact human description, module paths relative to ``strip``."""
        names = [m.removeprefix(strip).lstrip(".") or m for m in self.modules]
        if self.kind == "column_row":
            return f"{'+'.join(names[:-1])}->{names[-1]}"
        if self.kind == "attention":
            return f"heads {self.size}/kv {self.kv_heads}"
        if self.kind == "experts":
            return f"experts {self.size} top-{self.top_k}"
        return f"vocab {self.size}"


class Layer(BaseModel):
    """One unit a pipeline may cut around, with its costs for one sample unless stated.

    FLOPs are model FLOPs (matmuls and attention, the MFU convention) of the traced batch
    divided by it (per sample); ``activation_bytes`` is
    what autograd saves for backward in this layer per sample, measured from the saved tensors
    of a fake forward; ``boundary_bytes`` is what a pipeline cut right after this layer must
    send per sample (every tensor made at or before it and used after it).
    """

    index: int
    name: str
    signature: str
    modules: list[str]
    num_ops: int
    fwd_flops: float
    bwd_flops: float
    recompute_flops: float = 0.0
    """Extra hardware FLOPs of fused attention backward (score recompute), not model FLOPs."""
    params: int
    param_bytes: int
    trainable_params: int
    active_params: int
    tied_params: list[str] = Field(default_factory=list)
    activation_bytes: float
    boundary_bytes: float
    tp_patterns: list[TPPattern] = Field(default_factory=list)
    repeat_of: int | None = None
    """Index of the traced layer this one was copied from (repeated blocks are traced once)."""


class ModelGraph:
    """The costed graph of one training step (forward + backward) of a model.

    ``graph`` is a ``networkx.DiGraph`` of ATen ops in execution order. Node attributes:
    ``op``, ``module``, ``op_class``, ``layer``, ``fwd_flops``, ``bwd_flops``,
    ``recompute_flops``, ``saved_score_bytes`` (attention scores among the saved bytes),
    ``saved_sources`` (the node that made each saved tensor -> its bytes), ``causal``
    (an attention op with ``is_causal``),
    ``bytes_read``,
    ``bytes_written``, ``bwd_bytes``, ``saved_bytes``, ``shape``, ``dtype``, ``params``.
    Edges carry ``bytes``. Node costs are for the traced batch (``batch_size`` samples);
    ``layers`` give the same costs per sample.
    """

    kernels: str = "fused"
    """How the cost models run the memory-bound ops: ``"fused"`` (each chain of them is one
    kernel, attention reads GQA's K/V in place, as in Megatron-LM / Transformer Engine or
    torch.compile; see ``autopar.fusion``) or ``"eager"`` (every traced op is its own kernel,
    as the traced code runs in eager PyTorch). Set it on a graph before estimating."""

    def __init__(self, graph: nx.DiGraph, layers: list[Layer], *, batch_size: int,
                 input_shapes: list[tuple[int, ...]], total_params: int, param_bytes: int,
                 trainable_params: int, active_params: int, capture: str,
                 signature: str, model_name: str,
                 param_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        self.graph = graph
        self.layers = layers
        self.batch_size = batch_size
        self.input_shapes = input_shapes
        self.total_params = total_params
        self.param_bytes = param_bytes
        self.trainable_params = trainable_params
        self.active_params = active_params
        self.capture = capture
        self.signature = signature
        self.model_name = model_name
        self.param_shapes = param_shapes or {}
        """Shape of every parameter by canonical name (tied weights once)."""

    @property
    def fwd_flops(self) -> float:
        """Forward FLOPs of one training step per sample."""
        return sum(layer.fwd_flops for layer in self.layers)

    @property
    def bwd_flops(self) -> float:
        """Backward FLOPs of one training step per sample."""
        return sum(layer.bwd_flops for layer in self.layers)

    @property
    def seq_len(self) -> int:
        """Sequence length of the traced input (its second dimension; 1 without one)."""
        shape = self.input_shapes[0] if self.input_shapes else ()
        return int(shape[1]) if len(shape) > 1 else 1

    @property
    def hardware_flops(self) -> float:
        """FLOPs one training step per sample really executes: model FLOPs plus recompute."""
        return sum(lay.fwd_flops + lay.bwd_flops + lay.recompute_flops for lay in self.layers)

    @property
    def activation_bytes(self) -> float:
        """Bytes saved for backward per sample over the whole model."""
        return sum(layer.activation_bytes for layer in self.layers)

    def layer(self, name: str) -> Layer:
        """The layer called ``name``; raises ``KeyError`` listing a few names otherwise."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        known = ", ".join(layer.name for layer in self.layers[:5])
        raise KeyError(f"no layer {name!r}; layers start with {known}, ...")

    def summary(self) -> dict[str, object]:
        """Totals as plain data (what ``autopar inspect --json`` prints with the layers)."""
        return {
            "model": self.model_name,
            "signature": self.signature,
            "capture": self.capture,
            "batch_size": self.batch_size,
            "input_shapes": [list(s) for s in self.input_shapes],
            "params": self.total_params,
            "trainable_params": self.trainable_params,
            "active_params": self.active_params,
            "param_bytes": self.param_bytes,
            "fwd_flops_per_sample": self.fwd_flops,
            "bwd_flops_per_sample": self.bwd_flops,
            "hardware_flops_per_sample": self.hardware_flops,
            "activation_bytes_per_sample": self.activation_bytes,
            "num_layers": len(self.layers),
            "num_ops": self.graph.number_of_nodes(),
        }

    def __repr__(self) -> str:
        return (f"ModelGraph({self.model_name}, {len(self.layers)} layers, "
                f"{self.graph.number_of_nodes()} ops, {self.total_params:,} params)")
