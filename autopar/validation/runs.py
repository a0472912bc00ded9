"""Time one layer (or a stage's chain of layers) forward and backward, and measure its memory.

Times are the best of several runs (``autopar.profiling.measure.best_time``); backward time is
the best forward+backward minus the best forward, so the two add up to a step. Memory is what a
forward leaves allocated for its backward (besides its output), and the allocator's peak above
what was allocated before the run (the weights and the inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autopar.config import ParallelConfig
from autopar.executor.ac import apply_ac
from autopar.profiling.measure import best_time, held_memory, peak_memory
from autopar.tracing import Layer
from autopar.validation.local_layers import Call, output_tensor

SPAN_S = 0.25
"""Repeat a run until the repeats span this long: on a shared machine a layer of milliseconds
needs tens of tries to find one no other process interrupted."""


@dataclass(frozen=True)
class Measured:
    """One layer (or chain) in one recomputation mode, one micro-batch."""

    forward_s: float
    backward_s: float
    """Backward including the recomputation the mode adds."""
    saved_bytes: int
    peak_bytes: int


def with_recompute(module: nn.Module, layer: Layer, config: ParallelConfig, mode: str
                   ) -> nn.Module:
    """``module`` wrapped the way the executor recomputes ``layer`` in ``mode``."""
    if mode == "none":
        return module
    root = nn.Module()
    _attach(root, layer.name, module)
    apply_ac(root, [layer], config.model_copy(update={"recompute": mode}))
    return module


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` under ``root``, making empty parents as needed."""
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(leaf, module)


def run_chain(modules: list[nn.Module], calls: list[Call], fresh_input: bool = False
              ) -> torch.Tensor:
    """Forward ``modules`` as a chain, each one's output the next one's activation; returns
    the last output. ``fresh_input`` copies the incoming activation first, so that whether the
    first layer keeps it shows in what the forward leaves allocated."""
    value: torch.Tensor | None = None
    for module, call in zip(modules, calls, strict=True):
        incoming = call.activation_value()
        if value is None and fresh_input and incoming is not None:
            value = incoming.clone()
        args, kwargs = call.with_activation(value) if value is not None else (
            call.args, call.kwargs)
        value = output_tensor(module(*args, **kwargs))
    assert value is not None
    return value


def measure(modules: list[nn.Module], calls: list[Call], device: torch.device,
            repeats: int) -> Measured:
    """Run ``modules`` as a chain (each one's output is the next one's activation) forward and
    backward; time it and measure its memory."""
    params = [p for m in modules for p in m.parameters()]

    def forward(fresh_input: bool = False) -> torch.Tensor:
        return run_chain(modules, calls, fresh_input)

    grad: list[torch.Tensor] = []

    def step() -> None:
        out = forward()
        if not grad:
            grad.append(torch.randn_like(out))
        out.backward(grad[0])
        for p in params:
            p.grad = None
        for call in calls:
            leaf = call.activation_value()
            if leaf is not None:
                leaf.grad = None

    fwd = best_time(_holding(forward), device, repeats=repeats, span_s=SPAN_S)
    both = best_time(step, device, repeats=repeats, span_s=SPAN_S)
    out, held = held_memory(lambda: forward(fresh_input=True), device)
    return Measured(forward_s=fwd, backward_s=max(0.0, both - fwd),
                    saved_bytes=max(0, held - out.untyped_storage().nbytes()),
                    peak_bytes=peak_memory(step, device))


def _holding(forward: Callable[[], torch.Tensor]) -> Callable[[], Any]:
    """``forward`` with its graph (saved activations) kept until the next call starts, as
    training keeps it for backward: the forwards then run with the allocator as full as in
    training, rather than each reusing the blocks the previous one just freed."""
    held: list[torch.Tensor] = []

    def run() -> None:
        held.clear()
        held.append(forward())
    return run


def in_flight_peak(modules: list[nn.Module], calls: list[Call], device: torch.device,
                   micro_batches: int) -> int:
    """Peak bytes above the start while ``micro_batches`` micro-batches are forwarded through
    the chain and held (as a pipeline stage holds them at its peak), then backwarded."""
    params = [p for m in modules for p in m.parameters()]

    def run() -> None:
        outs = [run_chain(modules, calls) for _ in range(micro_batches)]
        for out in outs:
            out.backward(torch.randn_like(out))
        for p in params:
            p.grad = None

    return peak_memory(run, device)
