"""autopar: automatic parallelization planner for PyTorch training.

``autopar.trace(model, example_inputs)`` captures a model's training step as a costed
``ModelGraph``; planning, estimation and execution build on it.
"""

from autopar.errors import AutoparError, InputError, SpecError, TraceError
from autopar.tracing import Layer, ModelGraph, TPPattern, TraceFallbackWarning, trace

__version__ = "0.1.0"

__all__ = [
    "AutoparError",
    "InputError",
    "Layer",
    "ModelGraph",
    "SpecError",
    "TPPattern",
    "TraceError",
    "TraceFallbackWarning",
    "trace",
]
