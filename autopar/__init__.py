"""autopar: automatic parallelization planner for PyTorch training.

``autopar.trace(model, example_inputs)`` captures a model's training step as a costed
``ModelGraph``; ``autopar.estimate(graph, cluster, config, global_batch_size=...)`` predicts a
parallel configuration's step time and memory on a ``Cluster``.
"""

from autopar.cluster import Cluster  # noqa: I001 - after tracing: registers the profiles package
from autopar.config import ConfigError, ParallelConfig
from autopar.errors import AutoparError, InfeasibleError, InputError, SpecError, TraceError
from autopar.estimate import Estimate, estimate
from autopar.executor import ParallelModel, PlanMismatchError, parallelize
from autopar.plan import Plan, PlanError
from autopar.planner import plan
from autopar.solver.constraints import ConstraintError, Constraints
from autopar.tracing import Layer, ModelGraph, TPPattern, TraceFallbackWarning, trace

__version__ = "0.1.0"

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
