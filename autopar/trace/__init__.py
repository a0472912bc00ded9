"""Model capture: trace any ``nn.Module`` into a costed layer graph without allocating it."""

from autopar.trace.graph import Layer, ModelGraph, TPPattern
from autopar.trace.tracer import TraceFallbackWarning, trace

__all__ = ["Layer", "ModelGraph", "TPPattern", "TraceFallbackWarning", "trace"]
