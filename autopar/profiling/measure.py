"""Timing and memory measurement on one device, the same way on a GPU and a CPU.

``autopar profile`` and ``autopar validate`` both need "how long does this take" and "how much
memory did this need at its peak". Time is the wall clock around the call, on CUDA after
``torch.cuda.synchronize`` (kernels are queued, not run, when the call returns; CPU kernels
are synchronous). The peak on CUDA is the caching allocator's peak counter; a CPU allocator
keeps none, so there it is replayed from the allocation events PyTorch's profiler records
(the CPU allocator reports every allocation and free to it).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from autopar.errors import AutoparError


class MeasureError(AutoparError):
    """A measurement cannot be made on the requested device."""


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:1"`` as a device, refusing one this machine lacks."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MeasureError(f"unknown device {name!r}; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeasureError(f"device {name!r}: this machine has no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise MeasureError(f"device {name!r}: only cpu and cuda can be measured")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MeasureError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                           f"devices, cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU, whose kernels are synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, *, repeats: int = 10,
              warmup: int = 1, budget_s: float | None = None, span_s: float = 0.05) -> float:
    """The shortest of at least ``repeats`` timed runs of ``fn()``, after ``warmup`` runs.

    The minimum, not the mean, for the reason ``timeit`` gives: on a shared machine other
    processes only ever add time, so the fastest run is the best estimate of what the kernel
    itself costs. Short kernels repeat until the runs span ``span_s`` too: a neighbour that
    holds a core for a scheduler tick (milliseconds) would otherwise spoil every run of a
    microsecond kernel. With ``budget_s``, stops once the runs took that long (one run at
    least): a slow shape gets fewer repeats instead of overrunning the time limit.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = math.inf
    started = time.perf_counter()
    runs = 0
    while True:
        begin = time.perf_counter()
        fn()
        synchronize(device)
        end = time.perf_counter()
        best, runs = min(best, end - begin), runs + 1
        elapsed = end - started
        if budget_s is not None and elapsed > budget_s:
            return best
        if runs >= repeats and elapsed >= span_s:
            return best


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes allocated at the peak while ``fn()`` runs, above what was allocated before it."""
    return allocation(fn, device)[1]


def held_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    """``fn()``'s result and the bytes still allocated when it returns (with the result alive)
    that were not before: what a forward pass leaves held for its backward, whatever holds it
    (autograd's saved tensors, or a selective checkpoint's cache)."""
    result, _, held = allocation(fn, device)
    return result, held


def allocation(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, int]:
    """(result, peak bytes above the start, bytes held at the end) of running ``fn()``."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        return (result, int(torch.cuda.max_memory_allocated(device) - before),
                int(torch.cuda.memory_allocated(device) - before))
    return _cpu_allocation(fn)


def _cpu_allocation(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """The CPU allocator's peak and net bytes, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == _CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak, live


_CPU = torch._C._autograd.DeviceType.CPU


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's start/stop lines, which its C++ side writes straight to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
