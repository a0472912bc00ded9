"""Model capture: trace any ``nn.Module`` into a costed layer graph without allocating it."""

from autopar.tracing.graph import Layer, ModelGraph, TPPattern
from autopar.tracing.tracer import TraceFallbackWarning, trace

__all__ = ["Layer", "ModelGraph", "TPPattern", "TraceFallbackWarning", "trace"]
