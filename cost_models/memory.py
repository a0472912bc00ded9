"""Memory one device needs: model states, activations in flight, buffers and overheads.

Model states per parameter (Rajbhandari et al., "ZeRO", SC'20, section 3.1). Mixed precision
with Adam keeps a 2-byte weight and gradient plus 12 bytes of fp32 optimizer state: master
weight, momentum and variance, K = 12, 16 bytes in all. ZeRO stage 1 shards the optimizer
state over the data-parallel group, stage 2 the gradients as well, and stage 3 (FSDP) the
weights too, which then gathers one layer's full weights at a time.

Activations per layer come from the traced graph (bytes autograd saves), split by tensor and
sequence parallelism, and multiplied by the micro-batches a pipeline stage holds at once.
Full recomputation keeps only each layer's input, plus one layer's full activations while it
is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

FRAMEWORK_BYTES = 1.0 * 2**30
"""CUDA context, cuBLAS workspaces and NCCL communicators: about 1 GiB per process. This is an
assumed default, the order PyTorch's memory snapshots show before the first allocation."""

FRAGMENTATION = 0.05
"""Caching-allocator fragmentation, as a fraction of what the step allocates (assumed)."""

COMM_BUCKET_BYTES = 2 * 25 * 2**20
"""DDP's two in-flight gradient buckets of 25 MiB (torch DDP ``bucket_cap_mb`` default)."""

WORKING_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
"""Bytes of a weight, gradient or activation element in each training precision."""

_STATE_BYTES = {
    # (weight, gradient, optimizer) bytes per parameter
    ("bf16", "adamw"): (2, 2, 12),
    ("fp16", "adamw"): (2, 2, 12),
    ("fp32", "adamw"): (4, 4, 8),
    ("bf16", "sgd"): (2, 2, 8),
    ("fp16", "sgd"): (2, 2, 8),
    ("fp32", "sgd"): (4, 4, 4),
}


def state_bytes_per_param(precision: str, optimizer: str) -> tuple[int, int, int]:
    """(weight, gradient, optimizer-state) bytes per parameter."""
    try:
        return _STATE_BYTES[(precision, optimizer)]
    except KeyError:
        known = sorted({p for p, _ in _STATE_BYTES}), sorted({o for _, o in _STATE_BYTES})
        raise ValueError(f"no memory model for precision={precision!r} optimizer={optimizer!r};"
                         f" known precisions {known[0]}, optimizers {known[1]}") from None


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one device at its peak."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float
    overhead: float

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.buffers + self.overhead)


def model_state_bytes(params: float, largest_layer_params: float, *, precision: str,
                      optimizer: str, zero_stage: int, dp: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes for ``params`` parameters on one device.

    Under ZeRO-3 the device also holds the gathered weights of the layer being computed and of
    the one prefetched (two layers' worth of full weights).
    """
    w, g, o = state_bytes_per_param(precision, optimizer)
    optimizer_bytes = params * o / (dp if zero_stage >= 1 else 1)
    gradient_bytes = params * g / (dp if zero_stage >= 2 else 1)
    weight_bytes = params * w / (dp if zero_stage >= 3 else 1)
    if zero_stage >= 3 and dp > 1:
        weight_bytes += 2 * largest_layer_params * w
    return weight_bytes, gradient_bytes, optimizer_bytes


def peak_memory(*, weights: float, gradients: float, optimizer: float, activations: float,
                dp: int) -> MemoryBreakdown:
    """Add buffers, framework overhead and fragmentation to a device's model states and
    activations."""
    buffers = COMM_BUCKET_BYTES if dp > 1 else 0.0
    allocated = weights + gradients + optimizer + activations + buffers
    return MemoryBreakdown(weights, gradients, optimizer, activations, buffers,
                           FRAMEWORK_BYTES + FRAGMENTATION * allocated)
