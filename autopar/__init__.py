"""autopar: automatic parallelization planner for PyTorch training.

``autopar.trace(model, example_inputs)`` captures a model's training step as a costed
``ModelGraph``; ``autopar.estimate(graph, cluster, config, global_batch_size=...)`` predicts a
parallel configuration's step time and memory on a ``Cluster``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from autopar.cluster import Cluster  # noqa: I001 - after tracing: registers the profiles package
from autopar.config import ConfigError, ParallelConfig
from autopar.errors import AutoparError, InfeasibleError, InputError, SpecError, TraceError
from autopar.estimate import Estimate, estimate
from autopar.plan import Plan, PlanError
from autopar.planner import plan  # the solver itself loads on the first call
from autopar.solver.constraints import ConstraintError, Constraints
from autopar.tracing import Layer, ModelGraph, TPPattern, TraceFallbackWarning, trace

if TYPE_CHECKING:
    from autopar.executor.errors import PlanMismatchError
    from autopar.executor.parallel_model import ParallelModel
    from autopar.executor.parallelize import parallelize

__version__ = "0.1.0"

# The executor (torch.distributed.pipelining and checkpoint) takes about 1.7 s to import: load
# it on first use, not for `autopar inspect`.
_LAZY = {"parallelize": "autopar.executor", "ParallelModel": "autopar.executor",
         "PlanMismatchError": "autopar.executor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autopar' has no attribute {name!r}")


__all__ = [
    "AutoparError",
    "Cluster",
    "ConfigError",
    "ConstraintError",
    "Constraints",
    "Estimate",
    "InfeasibleError",
    "InputError",
    "Layer",
    "ModelGraph",
    "ParallelConfig",
    "ParallelModel",
    "Plan",
    "PlanError",
    "PlanMismatchError",
    "SpecError",
    "TPPattern",
    "TraceError",
    "TraceFallbackWarning",
    "estimate",
    "parallelize",
    "plan",
    "trace",
]
