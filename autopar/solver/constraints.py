"""What a user can pin or bound before the search: the solver only explores what these allow."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopar.config import Recompute, Schedule
from autopar.errors import AutoparError, field_problems


class ConstraintError(AutoparError):
    """A constraint on the search is malformed or contradicts itself."""


class Constraints(BaseModel):
    """Pins and bounds on the plan. ``None`` leaves a choice to the solver. The plan is the
    fastest of every valid configuration that obeys the pins, those where a pin changes
    nothing included (ZeRO at dp x cp = 1, a schedule at pp = 1: named as pinned).

    ``memory_headroom`` is the share of every device's memory the plan must leave free (0.1:
    plan for 90% of capacity). ``recompute`` lists the modes the solver may give a layer.
    ``allow_idle_devices`` lets a plan use fewer whole nodes than the cluster has, when that
    is faster or the only way to divide the batch (``solver/idle.py``); the plan's cluster is
    then the nodes it runs on (the first ones of each group).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dp: int | None = Field(None, ge=1)
    tp: int | None = Field(None, ge=1)
    pp: int | None = Field(None, ge=1)
    cp: int | None = Field(None, ge=1)
    zero_stage: Literal[0, 1, 2, 3] | None = None
    sequence_parallel: bool | None = None
    schedule: Schedule | None = None
    virtual_stages: int | None = Field(None, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    max_tp: int | None = Field(None, ge=1)
    recompute: tuple[Recompute, ...] = ("none", "selective", "full")
    memory_headroom: float = Field(0.0, ge=0.0, lt=1.0)
    allow_idle_devices: bool = False

    def __init__(self, **fields: object) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConstraintError(
                f"invalid constraints: {field_problems(exc, 'constraints')}") from None
        if not self.recompute:
            raise ConstraintError("constraints.recompute=() allows no mode; list at least one "
                                  "of 'none', 'selective', 'full'")
        if self.tp is not None and self.max_tp is not None and self.tp > self.max_tp:
            raise ConstraintError(f"constraints.tp={self.tp} exceeds max_tp={self.max_tp}; "
                                  "drop one of them")
        if self.virtual_stages not in (None, 1) and self.schedule not in (None, "interleaved"):
            raise ConstraintError(f"constraints.virtual_stages={self.virtual_stages} needs "
                                  f"schedule='interleaved', not {self.schedule!r}")
        if self.schedule == "interleaved" and self.virtual_stages == 1:
            raise ConstraintError("constraints.virtual_stages=1 with schedule='interleaved' "
                                  "allows nothing: interleaving needs 2 chunks per device or "
                                  "more; pin virtual_stages >= 2, or schedule='1f1b'")
        if self.pp == 1 and (self.schedule == "interleaved"
                             or (self.virtual_stages or 1) > 1):
            raise ConstraintError("constraints.pp=1 with interleaving (schedule='interleaved' "
                                  "or virtual_stages > 1) allows nothing: interleaving needs 2 "
                                  "pipeline stages or more")

    @classmethod
    def of(cls, value: Constraints | dict[str, object] | None) -> Constraints:
        """Accept a Constraints, a plain dict of its fields, or None (no constraints)."""
        if value is None:
            return cls()
        if isinstance(value, Constraints):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise ConstraintError(f"constraints must be a Constraints or a dict, got "
                              f"{type(value).__name__}")
