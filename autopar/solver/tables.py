"""Per-layer figures of one shape, grouped into classes of interchangeable layers.

The stage model never sees single layers: a stage holds so many layers of each class, and
recomputes so many of them in each mode. Two layers are interchangeable when their profiles
(every op's costs) are equal and they follow layers with the same output size (a fully
recomputed layer keeps its input), so every figure below is equal for them. A model of 80
identical blocks has a handful of classes, which keeps the CP-SAT model small and free of
symmetric copies.

Every figure comes from the functions ``estimate`` itself uses (``layer_cost``,
``layer_activation``, ``send_time``, ``dp_sync_time``), so the stage model and the estimate of
the plan it picks cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from autopar.cost_models.layers import LayerProfile
from autopar.cost_models.memory import (
    COMM_BUCKET_BYTES,
    FRAGMENTATION,
    FRAMEWORK_BYTES,
    model_state_bytes,
)
from autopar.cost_models.pipeline import peak_in_flight

from autopar.cluster import Cluster, NodeGroup
from autopar.config import ParallelConfig
from autopar.estimate import (
    OPTIMIZER_BYTES_PER_PARAM,
    LayerCost,
    dp_sync_time,
    layer_activation,
    layer_cost,
    send_time,
    stage_groups,
)
from autopar.solver.space import Shape
from autopar.tracing import ModelGraph

MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class ClassFigures:
    """One class of layers on one stage's device group under one shape (per micro-batch)."""

    cost: LayerCost
    params: float
    """Parameters one device holds for one layer of the class."""
    held: dict[str, float]
    """Activation bytes held per micro-batch in flight, by recomputation mode."""
    working: float
    """Bytes a fully recomputed layer needs while it runs again."""
    dp_sync: float
    """Per-layer data-parallel sync seconds (ZeRO-2/3: its own collectives; ZeRO-0/1: its
    share of the bandwidth term of the one bucketed all-reduce, latency left out)."""

    def forward(self, mode: str) -> float:
        return self.cost.forward + self.cost.comm(mode) / 2

    def backward(self, mode: str) -> float:
        return self.cost.backward + self.cost.recompute(mode) + self.cost.comm(mode) / 2


class LayerClasses:
    """The model's layers sorted into classes of interchangeable layers (computed once)."""

    def __init__(self, graph: ModelGraph, profiles: list[LayerProfile]) -> None:
        keys: dict[tuple[LayerProfile, float], int] = {}
        self.of_layer: list[int] = []
        for i, profile in enumerate(profiles):
            before = profiles[i - 1].boundary_bytes if i else -1.0
            self.of_layer.append(keys.setdefault((profile, before), len(keys)))
        first: dict[int, int] = {}
        for i, c in enumerate(self.of_layer):
            first.setdefault(c, i)
        self.representative = [first[c] for c in range(len(first))]
        self.size = [self.of_layer.count(c) for c in range(len(first))]


@dataclass
class ShapeTables:
    """What the stage model needs of one shape: classes, counts, per-stage figures.

    ``costs`` is shared by every shape of one search: layer costs depend only on tp, sequence
    parallelism, cp, micro-batch size and device group, which many shapes have in common.
    """

    graph: ModelGraph
    profiles: list[LayerProfile]
    classes: LayerClasses
    cluster: Cluster
    shape: Shape
    global_batch_size: int
    precision: str
    optimizer: str
    modes: tuple[str, ...]
    headroom: float
    costs: dict[tuple, object]

    @cached_property
    def config(self) -> ParallelConfig:
        """The shape's ParallelConfig with the default split."""
        return self.shape.config()

    @property
    def micro_batches(self) -> int:
        return self.shape.micro_batches(self.global_batch_size)

    @property
    def chunks(self) -> int:
        return self.shape.pp * self.shape.virtual_stages

    @property
    def layer_class(self) -> list[int]:
        return self.classes.of_layer

    @property
    def representative(self) -> list[int]:
        return self.classes.representative

    @property
    def groups(self) -> list[NodeGroup]:
        """The node group of each pipeline stage (device): it depends only on pp, as the
        degrees multiply to the cluster's device count (shared across the search)."""
        key = ("groups", self.shape.pp)
        if key not in self.costs:
            self.costs[key] = stage_groups(self.cluster, self.config)
        return self.costs[key]  # type: ignore[return-value]

    @property
    def distinct_groups(self) -> list[NodeGroup]:
        """The node groups the stages run on, each once, in stage order."""
        key = ("distinct groups", self.shape.pp)
        if key not in self.costs:
            self.costs[key] = list({id(g): g for g in self.groups}.values())
        return self.costs[key]  # type: ignore[return-value]

    def base(self, group: NodeGroup) -> list[ClassFigures]:
        """Per-class figures on ``group`` without the data-parallel sync (left 0): what
        depends only on tp, sequence parallelism, cp and the micro-batch size, shared by every
        shape and family that has those in common."""
        s = self.shape
        key = ("base", s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, id(group))
        if key not in self.costs:
            self.costs[key] = [self._class_base(i, group) for i in self.representative]
        return self.costs[key]  # type: ignore[return-value]

    def figures(self, group: NodeGroup) -> list[ClassFigures]:
        """Per-class figures on ``group``, shared with every shape that differs from this one
        only in its schedule (they do not depend on it)."""
        s = self.shape
        key = ("figures", s.tp, s.sequence_parallel, s.cp, s.dp, s.micro_batch_size,
               s.zero_stage, id(group))
        if key not in self.costs:
            self.costs[key] = [replace(f, dp_sync=self._sync(f.params, group))
                               for f in self.base(group)]
        return self.costs[key]  # type: ignore[return-value]

    def _class_base(self, i: int, group: NodeGroup) -> ClassFigures:
        config, p = self.config, self.profiles[i]
        params = p.params_per_rank(config.tp)
        held = {mode: layer_activation(self.profiles, i, config, mode)[0] for mode in MODES}
        working = layer_activation(self.profiles, i, config, "full")[1]
        return ClassFigures(self.layer_cost(i, group), params, held, working, 0.0)

    def _sync(self, params: float, group: NodeGroup) -> float:
        """Per-layer data-parallel sync seconds of a layer of ``params`` parameters."""
        config, m = self.config, self.micro_batches
        if config.zero_stage >= 2 or not params:
            return dp_sync_time([params], config, group, self.precision, m)
        # The one all-reduce is affine in its size: keep each layer's bandwidth share.
        big = dp_sync_time([2 * params], config, group, self.precision, m)
        return max(0.0, big - dp_sync_time([params], config, group, self.precision, m))

    def layer_cost(self, i: int, group: NodeGroup) -> LayerCost:
        """``estimate.layer_cost`` of layer ``i``, shared across the shapes of a search."""
        s = self.shape
        key = (i, s.tp, s.sequence_parallel, s.cp, s.micro_batch_size, id(group))
        if key not in self.costs:
            self.costs[key] = layer_cost(self.profiles[i], self.config, group, self.precision,
                                         self.graph.seq_len)
        return self.costs[key]  # type: ignore[return-value]

    def sends(self, group: NodeGroup) -> list[float]:
        """Send time after each layer, were it the last of a chunk on ``group`` (cached)."""
        cache = self.__dict__.setdefault("_sends", {})
        if id(group) not in cache:
            by_size: dict[float, float] = {}
            for size in {p.boundary_bytes for p in self.profiles}:
                by_size[size] = send_time(size, self.config, group)
            cache[id(group)] = [by_size[p.boundary_bytes] for p in self.profiles]
        return cache[id(group)]

    @cached_property
    def in_flight(self) -> tuple[int, ...]:
        """Micro-batches each device holds at its peak: the schedule's, whatever the costs."""
        return peak_in_flight(self.shape.schedule, self.shape.pp,
                              self.micro_batches, self.shape.virtual_stages)

    @property
    def largest_params(self) -> float:
        key = ("largest params", self.shape.tp)
        if key not in self.costs:
            self.costs[key] = max(p.params_per_rank(self.shape.tp) for p in self.profiles)
        return self.costs[key]  # type: ignore[return-value]

    def optimizer_rate(self, group: NodeGroup) -> float:
        """Optimizer seconds per parameter the device holds."""
        shards = self.shape.dp * self.shape.cp if self.shape.zero_stage >= 1 else 1
        device = group.device
        return OPTIMIZER_BYTES_PER_PARAM[self.optimizer] / shards / (
            device.memory_bandwidth * device.memory_efficiency)

    def state_bytes_per_param(self, zero_stage: int | None = None) -> tuple[float, float]:
        """(bytes per parameter held, fixed bytes) of model states on one device, at the
        shape's ZeRO stage or at ``zero_stage``."""
        dp = self.shape.dp * self.shape.cp
        zero = self.shape.zero_stage if zero_stage is None else zero_stage
        key = ("state bytes", self.shape.tp, dp, zero)
        if key not in self.costs:
            self.costs[key] = self._state_bytes(dp, zero)
        return self.costs[key]  # type: ignore[return-value]

    def _state_bytes(self, dp: int, zero: int) -> tuple[float, float]:
        w, g, o = model_state_bytes(1.0, 0.0, precision=self.precision,
                                    optimizer=self.optimizer, zero_stage=zero, dp=dp)
        fixed = sum(model_state_bytes(0.0, self.largest_params, precision=self.precision,
                                      optimizer=self.optimizer, zero_stage=zero, dp=dp))
        return w + g + o, fixed

    @cached_property
    def signature(self) -> tuple:
        """Everything the stage model and the split search read of this shape. Two shapes with
        one signature get the same model, so the same candidate splits with the same bounds:
        on a big cluster many shapes trade context parallelism for micro-batch size and keep
        every per-device figure (Llama-3-70B on 1024 H100s: cp 4 at micro-batch 1 through cp
        256 at 64), and the search solves their model once (``twins.py``)."""
        s = self.shape
        stage_groups = tuple(id(group) for group in self.groups)  # alive all search long
        per_group = tuple(
            (tuple((f.cost, f.params, tuple(sorted(f.held.items())), f.working, f.dp_sync)
                   for f in self.figures(group)),
             tuple(self.sends(group)), self.optimizer_rate(group), self.capacity(group))
            for group in self.distinct_groups)
        return (s.pp, s.virtual_stages, s.schedule, s.zero_stage, s.dp * s.cp > 1,
                self.micro_batches, self.modes, stage_groups, per_group,
                self.state_bytes_per_param(), self.buffers, self.in_flight)

    @property
    def buffers(self) -> float:
        return COMM_BUCKET_BYTES if self.shape.dp * self.shape.cp > 1 else 0.0

    def capacity(self, group: NodeGroup) -> float:
        """Bytes a device may allocate before fragmentation and the framework's share."""
        usable = group.device.memory_bytes * (1.0 - self.headroom) - FRAMEWORK_BYTES
        return usable / (1.0 + FRAGMENTATION)
