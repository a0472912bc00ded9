"""Compute time of ops and layers on one device: a roofline with size-dependent efficiency.

An op takes the longer of its arithmetic time (FLOPs at the device's peak for the dtype, scaled
by the efficiency a GEMM of that size reaches, which includes its fixed per-kernel time) and its
memory time (bytes moved at the achievable share of memory bandwidth); memory-bound kernels add
a launch. Views cost nothing. A causal fused attention kernel skips the masked tiles
(``causal_fraction``). Fused attention is one
kernel, costed on its FLOPs at ``ATTENTION_EFFICIENCY`` of the GEMM curve: flash-attention
kernels reach less of peak than a plain GEMM of the same size. FlashAttention-2 (Dao, 2023,
abstract) reaches "50-73% of the theoretical maximum FLOPs/s on A100", against roughly 80% for
large cuBLAS GEMMs, so about 0.7 of the GEMM figure.
"""

from __future__ import annotations

from typing import Protocol

ATTENTION_EFFICIENCY = 0.7
"""Fused attention's efficiency relative to a GEMM of the same FLOPs (see module docstring)."""

SUSTAINED_GEMM_FRACTION = 0.8
"""Share of a device's micro-benchmarked GEMM efficiency (its profile's curve: the best shape
found in isolation) that GEMMs sustain inside a training step: clocks throttle under
sustained load, backward GEMMs use transposed operand layouts, and concurrent kernels and
communication contend for L2 and memory. One value for every device. Calibrated against the
20 published DGX A100 runs in shared/calibration (Narayanan et al. 2021; Korthikanti et al.
2022) with fused memory-bound chains (autopar.fusion): mean absolute error 4.9%, errors from
-8.8% to +9.6%; 0.78 gives 4.3% with -10.8%, 0.82 gives 5.8% with +11.4%. The external H100
set (benchmarks/external.py, not fitted) gives 5.1%, -7.3% to +8.8%."""


CAUSAL_TILE = 128
"""Query/key tile of fused attention kernels (FlashAttention-2's block size on A100/H100)."""


def causal_fraction(seq: int) -> float:
    """Share of the full ``seq x seq`` attention work a causal fused kernel does: it skips the
    tiles above the diagonal and computes the diagonal ones whole, ``(1 + tile/seq) / 2``
    (FlashAttention-2, Dao 2023, section 3.1.1). Model FLOPs count the full square; time does
    not."""
    if seq <= CAUSAL_TILE:
        return 1.0
    return 0.5 * (1 + CAUSAL_TILE / seq)


class Device(Protocol):
    """What the compute model needs of a device profile."""

    memory_bandwidth: float
    memory_efficiency: float
    kernel_launch_overhead_s: float

    sustained_fraction: float | None

    def peak(self, dtype: str) -> float: ...

    def matmul_efficiency_at(self, flops: float, dtype: str | None = None) -> float: ...

    def attention_efficiency_at(self, flops: float) -> float | None: ...

    def memory_bandwidth_at(self, nbytes: float) -> float: ...


def arithmetic_efficiency(op_class: str, flops: float, device: Device, dtype: str) -> float:
    """Fraction of the dtype's peak an op of ``flops`` FLOPs reaches inside a training step:
    the device's micro-benchmarked efficiency (its measured attention curve for fused
    attention, else a fixed share of the matmul curve) times the sustained fraction."""
    if op_class == "attention":
        measured = device.attention_efficiency_at(flops)
        efficiency = (measured if measured is not None
                      else device.matmul_efficiency_at(flops, dtype) * ATTENTION_EFFICIENCY)
    else:
        efficiency = device.matmul_efficiency_at(flops, dtype)
    sustained = device.sustained_fraction
    return efficiency * (SUSTAINED_GEMM_FRACTION if sustained is None else sustained)


def op_time_parts(op_class: str, flops: float, bytes_moved: float, device: Device,
                  dtype: str) -> tuple[float, float, float]:
    """(arithmetic, memory, launch) seconds of one op; it takes ``max(arithmetic, memory) +
    launch``. Apart so that a validation can tell compute-bound time from memory-bound time."""
    if op_class == "view" or (flops <= 0 and bytes_moved <= 0):
        return 0.0, 0.0, 0.0
    arithmetic = 0.0
    if flops > 0:
        arithmetic = flops / (device.peak(dtype)
                              * arithmetic_efficiency(op_class, flops, device, dtype))
    memory = bytes_moved / device.memory_bandwidth_at(bytes_moved)
    # The GEMM efficiency curve already holds a matmul's fixed per-kernel time; other kernels
    # pay a launch on top of their memory time.
    launch = 0.0 if flops > 0 else device.kernel_launch_overhead_s
    return arithmetic, memory, launch


def op_time(op_class: str, flops: float, bytes_moved: float, device: Device, dtype: str) -> float:
    """Seconds one op takes: roofline of its FLOPs and bytes, plus a kernel launch."""
    arithmetic, memory, launch = op_time_parts(op_class, flops, bytes_moved, device, dtype)
    return max(arithmetic, memory) + launch
