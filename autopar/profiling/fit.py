"""Fit micro-benchmark samples into the profile fields the cost models read.

- **Peaks.** A device whose datasheet autopar knows (a bundled profile, or ``--base``) keeps its
  datasheet peaks, so the curves say how much of the datasheet this machine reaches. A CPU has
  no datasheet peak autopar could know; its peak per dtype is the best matmul throughput
  measured, so its curves end at 1.0.
- **Efficiency curves** (matmul per dtype, fused attention): achieved FLOP/s over the peak at
  each measured size, made non-decreasing by isotonic regression (pool-adjacent-violators: the
  closest non-decreasing curve in least squares). A bigger kernel is never slower per FLOP in
  the cost model, so noise that says otherwise is averaged away rather than kept.
- **Memory.** The bandwidth is the largest copy's (a size far beyond the caches) unless the
  datasheet gives it; ``memory_efficiency`` is what elementwise and normalisation kernels reach
  of it at their largest sizes; ``kernel_launch_overhead_s`` is the time of a one-element kernel
  issued back to back.
- **Links.** All-reduce bus bandwidth (nccl-tests' convention: algorithm bandwidth x 2(n-1)/n)
  at the largest size, and a per-hop latency from the smallest (see ``link_fields``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from autopar.cluster import DeviceProfile, ProfileError
from autopar.cost_models.communication import DEFAULT_INTRA_EFFICIENCY
from autopar.profiling.benchmarks import Sample


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent
    violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            prev_mean, prev_count = blocks[-1]
            total = prev_count + count
            blocks[-1] = [(prev_mean * prev_count + mean * count) / total, total]
    return [mean for mean, count in blocks for _ in range(int(count))]


def _significant(x: float) -> float:
    return float(f"{x:.3g}")


def efficiency_curve(samples: Sequence[Sample], peak: float) -> list[tuple[float, float]]:
    """``(FLOPs, fraction of peak)`` points, non-decreasing, one per measured size."""
    by_flops: dict[float, list[float]] = defaultdict(list)
    for s in samples:
        by_flops[s.flops].append(s.flops / (s.seconds * peak))
    flops = sorted(by_flops)
    fitted = isotonic([statistics.fmean(by_flops[f]) for f in flops])
    # rounding is monotone, so the curve stays non-decreasing; keep it inside (0, 1]; two
    # sizes whose FLOPs round alike keep the first (the profile needs increasing FLOPs)
    return _strictly_increasing([(_significant(f), min(1.0, max(_significant(e), 1e-4)))
                                 for f, e in zip(flops, fitted, strict=True)])


def _best(samples: Sequence[Sample]) -> float:
    return max(s.flops / s.seconds for s in samples)


def device_fields(samples: Sequence[Sample], *, name: str, memory_bytes: int,
                  base: DeviceProfile | None, provenance: str) -> dict[str, Any]:
    """The fields of a ``DeviceProfile`` from the samples (see the module docstring)."""
    matmul: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind == "matmul":
            matmul[s.dtype].append(s)
    peaks: dict[str, float] = {}
    sources: dict[str, str] = {}
    for dtype, group in matmul.items():
        if base is not None and _has_peak(base, dtype):
            peaks[dtype] = base.peak(dtype)
            sources[f"peak_flops.{dtype}"] = base.sources.get(
                f"peak_flops.{dtype}", base.sources.get("peak_flops", f"[datasheet] {base.name}"))
        else:
            peaks[dtype] = _significant(_best(group))
            sources[f"peak_flops.{dtype}"] = (
                f"[measured] best matmul throughput in the sweep (no datasheet peak known); "
                f"{provenance}")
    curves = {dtype: efficiency_curve(group, peaks[dtype]) for dtype, group in matmul.items()}
    main = "bf16" if "bf16" in curves and base is not None else next(iter(curves))
    fields: dict[str, Any] = {
        "name": name,
        "memory_bytes": memory_bytes,
        "peak_flops": peaks,
        "matmul_efficiency": curves[main],
        "matmul_efficiency_by_dtype": curves,
    }
    sources["matmul_efficiency"] = (f"[measured] the {main} curve of matmul_efficiency_by_dtype"
                                    f"; {provenance}")
    sources["matmul_efficiency_by_dtype"] = (
        f"[measured] square and 4:1 tall GEMMs per dtype, isotonic fit; {provenance}")
    attention = [s for s in samples if s.kind.startswith("attention")]
    if attention:
        fields["attention_efficiency"] = efficiency_curve(attention, peaks[attention[0].dtype])
        sources["attention_efficiency"] = (
            f"[measured] causal scaled_dot_product_attention forward and backward, "
            f"{attention[0].dtype}; {provenance}")
    fields.update(_memory_fields(samples, base, provenance, sources))
    fields["sources"] = sources
    return fields


def _has_peak(device: DeviceProfile, dtype: str) -> bool:
    try:
        device.peak(dtype)
    except ProfileError:
        return False
    return True


def _memory_fields(samples: Sequence[Sample], base: DeviceProfile | None, provenance: str,
                   sources: dict[str, str]) -> dict[str, Any]:
    kernels = [s for s in samples if s.kind in ("copy", "elementwise", "norm")]
    if not kernels:
        return {}
    launch = min((s.seconds for s in samples if s.kind == "launch"), default=0.0)

    def rate(s: Sample) -> float:  # the cost model adds the launch on top of the memory time
        return s.bytes / max(s.seconds - launch, 0.1 * s.seconds)

    by_size: dict[float, list[float]] = defaultdict(list)
    for s in kernels:
        by_size[s.bytes].append(rate(s))
    sizes = sorted(by_size)
    achieved = _smoothed([_typical(by_size[size]) for size in sizes])
    if base is not None:
        bandwidth = base.memory_bandwidth
        sources["memory_bandwidth"] = base.sources.get("memory_bandwidth",
                                                       f"[datasheet] {base.name}")
    else:  # no datasheet: the best any size reached (on a CPU, what fits in its caches)
        bandwidth = _significant(max(achieved))
        sources["memory_bandwidth"] = (f"[measured] best bandwidth of copy, add, GELU, LayerNorm "
                                       f"and RMSNorm over all sizes; {provenance}")
    curve = [(_significant(size), min(1.0, max(1e-4, _significant(a / bandwidth))))
             for size, a in zip(sizes, achieved, strict=True)]
    fields: dict[str, Any] = {
        "memory_bandwidth": bandwidth,
        "memory_efficiency": curve[-1][1],
        "memory_efficiency_by_bytes": _strictly_increasing(curve),
    }
    sources["memory_efficiency"] = (f"[measured] the largest size of memory_efficiency_by_bytes"
                                    f"; {provenance}")
    sources["memory_efficiency_by_bytes"] = (
        f"[measured] median over copy, add, GELU, LayerNorm and RMSNorm of bytes moved per "
        f"second (launch excluded) at each size, over memory_bandwidth; {provenance}")
    if launch:
        fields["kernel_launch_overhead_s"] = _significant(launch)
        sources["kernel_launch_overhead_s"] = (
            f"[measured] one-element add issued back to back; {provenance}")
    return fields


def _typical(rates: list[float]) -> float:
    """The median rate of the kernels at one size, leaving out those a neighbouring process
    slowed down (below a quarter of the best): interference only ever slows a run down."""
    best = max(rates)
    return statistics.median(r for r in rates if r >= best / 4)


def _smoothed(values: list[float]) -> list[float]:
    """Running median of three neighbouring sizes: bandwidth changes with size smoothly (at
    cache boundaries over a factor of two or more), a single odd size is noise."""
    if len(values) < 3:
        return values
    middle = [statistics.median(values[i - 1:i + 2]) for i in range(1, len(values) - 1)]
    return [values[0], *middle, values[-1]]


def _strictly_increasing(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Drop points whose rounded x repeats the previous one."""
    out: list[tuple[float, float]] = []
    for x, y in points:
        if not out or x > out[-1][0]:
            out.append((x, y))
    return out


def link_fields(samples: Sequence[Sample], *, name: str, provenance: str) -> dict[str, Any]:
    """A ``LinkProfile``'s fields from all-reduce samples across ``n`` local ranks.

    The cost model times a one-node all-reduce of ``B`` bytes as ``2(n-1) latency +
    2(n-1)/n B / (bandwidth x DEFAULT_INTRA_EFFICIENCY)`` (the efficiency turns a datasheet
    line rate into what NCCL rings reach). The line through the smallest and the largest size
    gives the two terms; ``bandwidth`` is the rate over that efficiency, so that the model gives
    back the measured times. ``allreduce_busbw`` is nccl-tests' figure at the largest size.
    """
    ranks = samples[0].shape[1]
    hops = 2 * (ranks - 1)
    largest = max(samples, key=lambda s: s.bytes)
    smallest = min(samples, key=lambda s: s.bytes)
    busbw = largest.bytes / largest.seconds * hops / ranks
    rate = busbw  # bytes/s of the ring's transfer term, latency excluded
    if largest.seconds > smallest.seconds and largest.bytes > smallest.bytes:
        rate = (largest.bytes - smallest.bytes) * hops / ranks / (
            largest.seconds - smallest.seconds)
    # (a smallest size above the line through the origin is noise: keep half as latency)
    latency = max(smallest.seconds - smallest.bytes * hops / ranks / rate,
                  0.5 * smallest.seconds) / hops
    return {
        "name": name,
        "bandwidth": _significant(rate / DEFAULT_INTRA_EFFICIENCY),
        "latency_s": _significant(latency),
        "allreduce_busbw": _significant(busbw),
        "source": (f"[measured] all_reduce across {ranks} local ranks from "
                   f"{smallest.bytes / 2**10:.0f} KiB to {largest.bytes / 2**20:.0f} MiB: "
                   f"latency per hop and transfer rate (bandwidth: the rate over the cost "
                   f"model's ring efficiency {DEFAULT_INTRA_EFFICIENCY}); allreduce_busbw at "
                   f"the largest size; {provenance}"),
    }
