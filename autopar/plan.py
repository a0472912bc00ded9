"""``autopar.Plan``: what the solver chose, why, and what it predicted — as reviewable JSON.

A plan is written to be read by a person and diffed in review, so its JSON is deterministic:
the same inputs give the same bytes. What varies from run to run (how long the search took)
is kept on the object but not written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopar.config import ParallelConfig
from autopar.errors import AutoparError
from autopar.estimate import Estimate

SCHEMA_VERSION = 1


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


class Plan(BaseModel):
    """A parallelization plan for one model on one cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    model: dict[str, object] = Field(description="fingerprint of the model planned for")
    cluster: str
    world_size: int
    global_batch_size: int
    precision: str
    optimizer: str
    config: ParallelConfig
    estimate: Estimate
    solver: SolverStats
    runners_up: list[RunnerUp] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON, atomically: a crash leaves the old file or none."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

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
            raise PlanError(f"plan file {path}: field {where}: {first['msg']}") from None
