"""Shapes that share one model of their splits ("twins").

What the stage model and the split search read of a shape is its signature
(``ShapeTables.signature``): the schedule, the micro-batch count, every per-class figure on
every stage's node group, the sends, the memory the devices have and need. Shapes with one
signature would build the same model, propose the same splits with the same bounds, and prove
the same things. On a big cluster there are many: 70B on 1024 H100s has seven shapes for each
pipeline schedule that trade context parallelism for micro-batch size (cp 4 at micro-batch 1
through cp 256 at 64) and keep every per-device figure equal.

The search solves such a model once. Why no twin loses its best plan: every split the model
proposes is costed with ``estimate`` for every twin attached so far, and a twin attached later
first has every split proposed before it costed (``Twins.attach``); the model's bounds are
lower bounds on the step time of every twin (they read the same figures); so once the model
has nothing left below the best step time found, no twin has a split below it that was not
costed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autopar.solver import pp2
from autopar.solver.space import Shape
from autopar.solver.stage_model import Candidate, StageModel
from autopar.solver.tables import ShapeTables


@dataclass
class Twins:
    """The shapes of one signature met so far, their one model, and what it proposed."""

    model: StageModel | pp2.SplitSearch
    shapes: list[Shape] = field(default_factory=list)
    proposed: list[Candidate] = field(default_factory=list)

    @classmethod
    def of(cls, t: ShapeTables) -> Twins:
        """A fresh model for ``t``: the exact split search for two-device interleaved shapes
        (``pp2.py``), else the CP-SAT stage model."""
        return cls(pp2.SplitSearch(t) if pp2.applies(t) else StageModel(t))

    def attach(self, shape: Shape) -> list[Candidate]:
        """Add ``shape``; returns the splits proposed before it came, for it to cost."""
        self.shapes.append(shape)
        return list(self.proposed)
