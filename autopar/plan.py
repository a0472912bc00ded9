"""``autopar.Plan``: what the solver chose, why, and what it predicted — as reviewable JSON.

A plan is written to be read by a person and diffed in review, so its JSON is deterministic:
the same inputs give the same bytes. What varies from run to run (how long the search took)
is kept on the object but not written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from autopar.cluster import Cluster
from autopar.config import ParallelConfig, Recompute, Schedule
from autopar.errors import AutoparError
from autopar.estimate import Estimate
from autopar.files import write_atomically

SCHEMA_VERSION = 2


class PlanError(AutoparError):
    """A plan file that cannot be read: not JSON, an unknown schema version, invalid fields."""


class SolverStats(BaseModel):
    """What the search did to find the plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shapes: int = Field(description="global configurations in the search space")
    pruned_by_time: int = Field(description="shapes a step-time bound proved slower")
    pruned_by_memory: int = Field(description="shapes a memory bound proved too big")
    solved: int = Field(description="shapes whose CP-SAT stage model was solved")
    candidates: int = Field(description="splits proposed by CP-SAT and costed by estimate()")
    optimal: bool = Field(description="proven optimal under the cost model")
    gap: float = Field(description="(step time - lower bound) / step time; 0 when optimal")
    lower_bound_s: float = Field(description="no configuration is faster than this")
    solve_time_s: float = Field(0.0, exclude=True,
                                description="wall-clock seconds; not saved (varies by run)")


class RunnerUp(BaseModel):
    """A configuration that lost, with its prediction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: ParallelConfig
    estimate: Estimate


MESH_DIMS: tuple[str, ...] = ("pp", "dp", "cp", "tp")
"""The device mesh's dimensions, outermost first (Megatron's order: tp innermost)."""

Placement = str
"""A DTensor placement on one mesh dimension: ``"Replicate()"`` or ``"Shard(d)"``."""


class RankPlacement(BaseModel):
    """Where one rank runs and its coordinate on each mesh dimension."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(ge=0)
    node: int = Field(ge=0, description="node index over the whole cluster, groups in order")
    node_group: str
    local_device: int = Field(ge=0, description="device index inside its node")
    pp: int = Field(ge=0)
    dp: int = Field(ge=0)
    cp: int = Field(ge=0)
    tp: int = Field(ge=0)


class DeviceMesh(BaseModel):
    """The ranks as a ``pp x dp x cp x tp`` grid: rank = ((pp*DP + dp)*CP + cp)*TP + tp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dims: tuple[str, ...] = Field(MESH_DIMS, description="dimension names, outermost first")
    shape: tuple[int, ...] = Field(description="size of each dimension, in the order of dims")
    ranks: list[RankPlacement]


class ChunkPlan(BaseModel):
    """One pipeline chunk (a virtual stage): its layers and costs per micro-batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk: int = Field(ge=0, description="virtual stage index in model order")
    layers: list[str] = Field(description="traced layer names, in model order")
    forward_s: float = Field(description="forward seconds per micro-batch")
    backward_s: float = Field(description="backward (and recompute) seconds per micro-batch")
    send_s: float = Field(description="seconds to pass one micro-batch to the next chunk")


class StagePlan(BaseModel):
    """One pipeline stage: the devices running it, its chunks, its time and memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: int = Field(ge=0)
    node_group: str
    device: str = Field(description="device type of its ranks")
    ranks: list[int]
    chunks: list[ChunkPlan] = Field(description="virtual_stages chunks, in model order")
    time_s: float = Field(description="busy seconds per step (compute, recompute, comm)")
    memory: dict[str, float] = Field(description="peak bytes per device by kind")
    capacity: float = Field(description="bytes of memory per device")

    @property
    def layers(self) -> list[str]:
        """Every layer this stage holds, in model order."""
        return [name for chunk in self.chunks for name in chunk.layers]


class ParamSharding(BaseModel):
    """How one parameter is split: its full shape and a DTensor placement per mesh dim."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, ...]
    placements: dict[str, Placement] = Field(
        description="dp, cp and tp -> Replicate() or Shard(dim); pp holds whole layers")


class ModuleSharding(BaseModel):
    """A module's tensor-parallel style and its parameters' placements."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    module: str
    layer: str = Field(description="the traced layer that holds it")
    style: Literal["colwise", "rowwise", "vocab_embedding", "vocab_head", "attention",
                   "experts", "replicate"]
    params: dict[str, ParamSharding] = Field(default_factory=dict,
                                             description="by local name (weight, bias)")
    note: str = ""


class DataParallelPlan(BaseModel):
    """How model state is replicated or sharded across the data-parallel group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    degree: int = Field(ge=1, description="data-parallel replicas (dp)")
    group_size: int = Field(ge=1, description="ranks that share gradients: dp x cp")
    zero_stage: Literal[0, 1, 2, 3]
    strategy: Literal["ddp", "zero1", "zero2", "fsdp"]
    sharded: list[Literal["optimizer", "gradients", "parameters"]]


class MicroBatching(BaseModel):
    """How each replica's share of the batch flows through the pipeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    micro_batch_size: int = Field(ge=1)
    micro_batches: int = Field(ge=1, description="per replica per step")
    samples_per_replica: int = Field(ge=1)
    schedule: Schedule
    virtual_stages: int = Field(ge=1)


class Plan(BaseModel):
    """A parallelization plan for one model on one cluster.

    Everything the executor needs besides the model: the mesh and where each rank sits, each
    stage's layers and devices, each module's sharding, recomputation per layer, the
    data-parallel strategy and the micro-batch schedule; and what was predicted, how it was
    found, and what it beat. A hand-edited plan is checked on load: see ``_consistent``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    model: dict[str, object] = Field(description="fingerprint of the model planned for")
    cluster: Cluster = Field(description="the cluster as planned for")
    world_size: int
    global_batch_size: int
    precision: str
    optimizer: str
    config: ParallelConfig
    mesh: DeviceMesh
    stages: list[StagePlan]
    sharding: list[ModuleSharding]
    recompute: dict[str, Recompute] = Field(description="layer name -> recomputation mode")
    data_parallel: DataParallelPlan
    micro_batching: MicroBatching
    estimate: Estimate
    solver: SolverStats
    runners_up: list[RunnerUp] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not {SCHEMA_VERSION}, the version this "
                             "autopar reads: re-run `autopar plan`")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        """Refuse a plan whose parts disagree, naming the field."""
        for problem in plan_problems(self):
            raise ValueError(problem)
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically: a crash leaves the old file or none."""
        write_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        """Read a plan file, refusing another schema version or any invalid field by name."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PlanError(f"plan file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"plan file {path} is not JSON: {exc}") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise PlanError(f"plan file {path} has schema_version {version!r}; this autopar "
                            f"reads version {SCHEMA_VERSION}: re-run `autopar plan` with it")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            prefix = f"field {where}: " if where else ""
            raise PlanError(f"plan file {path}: {prefix}{message}") from None


def plan_problems(plan: Plan) -> Iterator[str]:
    """What is inconsistent in a plan, each message starting with the field at fault."""
    c = plan.config
    if c.world_size != plan.world_size:
        yield (f"config: dp x tp x pp x cp = {c.dp}x{c.tp}x{c.pp}x{c.cp} = {c.world_size}, but "
               f"world_size is {plan.world_size}; the degrees must multiply to world_size")
    if plan.cluster.world_size != plan.world_size:
        yield (f"world_size: {plan.world_size}, but the cluster has "
               f"{plan.cluster.world_size} devices")
    shape = (c.pp, c.dp, c.cp, c.tp)
    if plan.mesh.dims != MESH_DIMS or plan.mesh.shape != shape:
        yield (f"mesh: dims {list(plan.mesh.dims)} of shape {list(plan.mesh.shape)}, but the "
               f"config gives {list(MESH_DIMS)} of shape {list(shape)}")
    ranks = [r.rank for r in plan.mesh.ranks]
    if sorted(ranks) != list(range(plan.world_size)):
        yield f"mesh.ranks: must list ranks 0..{plan.world_size - 1} once each"
    for r in plan.mesh.ranks:
        if ((r.pp * c.dp + r.dp) * c.cp + r.cp) * c.tp + r.tp != r.rank:
            yield (f"mesh.ranks: rank {r.rank} has coordinates pp={r.pp} dp={r.dp} cp={r.cp} "
                   f"tp={r.tp}, which are not its place in the {list(MESH_DIMS)} grid")
            break
    if len(plan.stages) != c.pp:
        yield f"stages: {len(plan.stages)} stages, but config.pp is {c.pp}"
    where: dict[str, int] = {}
    for stage in plan.stages:
        if len(stage.chunks) != c.virtual_stages:
            yield (f"stages.{stage.stage}.chunks: {len(stage.chunks)} chunks, but "
                   f"config.virtual_stages is {c.virtual_stages}")
        for name in stage.layers:
            if name in where:
                yield (f"stages: layer {name!r} is in stage {where[name]} and stage "
                       f"{stage.stage}; each layer belongs to exactly one stage")
            where[name] = stage.stage
    if set(where) != set(plan.recompute):
        missing = sorted(set(plan.recompute) - set(where))
        extra = sorted(set(where) - set(plan.recompute))
        yield (f"stages: the stages hold {len(where)} layers but recompute names "
               f"{len(plan.recompute)}; not in any stage: {missing[:3]}, without a recompute "
               f"mode: {extra[:3]}")
    layers = plan.model.get("layers")
    if isinstance(layers, int) and len(where) != layers:
        yield f"stages: {len(where)} layers placed, but the model has {layers}"
    chunk_sizes = [len(ch.layers) for s in range(c.virtual_stages)
                   for ch in [st.chunks[s] for st in plan.stages if s < len(st.chunks)]]
    if c.layers_per_stage is not None and tuple(chunk_sizes) != c.layers_per_stage:
        yield (f"stages: chunks hold {chunk_sizes} layers, but config.layers_per_stage is "
               f"{list(c.layers_per_stage)}")
    modes = list(plan.recompute.values())
    expected = [c.recompute_of(i) for i in range(len(modes))] if (
        isinstance(c.recompute, str) or len(c.recompute) == len(modes)) else None
    if expected is not None and modes != expected:
        yield "recompute: the per-layer modes differ from config.recompute"
    dp = plan.data_parallel
    if (dp.degree, dp.zero_stage, dp.group_size) != (c.dp, c.zero_stage, c.dp * c.cp):
        yield (f"data_parallel: degree {dp.degree}, ZeRO {dp.zero_stage}, group {dp.group_size}"
               f" disagree with config (dp={c.dp}, zero_stage={c.zero_stage}, cp={c.cp})")
    mb = plan.micro_batching
    if (mb.micro_batch_size, mb.schedule, mb.virtual_stages) != (
            c.micro_batch_size, c.schedule, c.virtual_stages) or (
            mb.micro_batch_size * mb.micro_batches * c.dp != plan.global_batch_size):
        yield (f"micro_batching: {mb.micro_batches} x {mb.micro_batch_size} samples per "
               f"replica, {mb.schedule} schedule, disagree with config and global_batch_size")
