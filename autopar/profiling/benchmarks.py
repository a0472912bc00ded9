"""The micro-benchmarks ``autopar profile`` runs: each times one kind of kernel over a sweep of
sizes on the local device and returns raw ``Sample``s; ``fit.py`` turns them into a profile.

Each sweep grows its sizes until one run takes longer than ``Budget.per_call_s`` or the sweep has
used its share of the time, so a slow device (a laptop CPU, bf16 without hardware support)
measures fewer sizes instead of overrunning. Inputs are random (zeros run faster on some
hardware) and every size is timed after a warm-up run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from autopar.cost_models.compute import causal_fraction
from autopar.profiling.measure import MeasureError, best_time

Progress = Callable[[str], None]

TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                "fp16": torch.float16}


@dataclass(frozen=True)
class Sample:
    """One timed kernel: what it was, its FLOPs and bytes moved, and its best seconds."""

    kind: str
    """``matmul``, ``attention_fwd``, ``attention_bwd``, ``copy``, ``elementwise``, ``norm``,
    ``launch`` or ``all_reduce``."""
    dtype: str
    shape: tuple[int, ...]
    flops: float
    bytes: float
    seconds: float


@dataclass(frozen=True)
class Budget:
    """How long the whole profile may take and how long one timed call may take."""

    total_s: float
    per_call_s: float

    def share(self, fraction: float) -> float:
        return self.total_s * fraction


def _sweep(sizes: list[int], seconds_for: Callable[[int], float], limit_s: float,
           per_call_s: float) -> Iterator[tuple[int, float]]:
    """Time ``sizes`` in order until a call is too slow or the sweep's time is spent."""
    started = time.perf_counter()
    for size in sizes:
        seconds = seconds_for(size)
        yield size, seconds
        if seconds > per_call_s or time.perf_counter() - started > limit_s:
            return


def _random(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def matmul_dtypes(device: torch.device) -> list[str]:
    """The dtypes whose matmuls are worth measuring on this device."""
    if device.type == "cuda":
        return ["bf16", "fp16", "tf32", "fp32"]
    return ["fp32", "bf16"]


def matmuls(device: torch.device, budget: Budget, progress: Progress) -> list[Sample]:
    """Square and tall-skinny GEMMs (a transformer's ``tokens x hidden @ hidden x 4 hidden``)
    per dtype, from 64 up to what the budget allows."""
    samples: list[Sample] = []
    largest = 8192 if device.type == "cuda" else 2048
    sizes = [n for n in (64, 128, 256, 512, 1024, 2048, 4096, 8192) if n <= largest]
    dtypes = matmul_dtypes(device)
    for key in dtypes:
        progress(f"matmul {key}")
        dtype = TORCH_DTYPES[key]
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = key == "tf32"
        try:
            for tall in (1, 4):
                def run(n: int, tall: int = tall, dtype: torch.dtype = dtype) -> float:
                    a = _random((tall * n, n), dtype, device)
                    b = _random((n, n), dtype, device)
                    return best_time(lambda: a @ b, device,
                                       budget_s=budget.per_call_s)
                limit = budget.share(0.45) / (2 * len(dtypes))
                for n, seconds in _sweep(sizes, run, limit, budget.per_call_s):
                    m = tall * n
                    samples.append(Sample("matmul", key, (m, n, n), 2.0 * m * n * n,
                                          float((m * n + n * n + m * n) * dtype.itemsize),
                                          seconds))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return samples


def attention(device: torch.device, budget: Budget, progress: Progress) -> list[Sample]:
    """Causal fused attention (``scaled_dot_product_attention``) forward and backward over
    sequence lengths, in the device's training dtype; FLOPs are the work a causal kernel does
    (model FLOPs times ``causal_fraction``), as the cost model counts them."""
    progress("attention")
    key = "bf16" if device.type == "cuda" else "fp32"
    dtype = TORCH_DTYPES[key]
    heads, head_dim = (16, 128) if device.type == "cuda" else (8, 64)
    top = 16384 if device.type == "cuda" else 2048
    sizes = [s for s in (128, 256, 512, 1024, 2048, 4096, 8192, 16384) if s <= top]
    samples: list[Sample] = []

    def run(seq: int) -> float:
        q, k, v = (_random((1, heads, seq, head_dim), dtype, device, True) for _ in range(3))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        grad = torch.randn_like(out)
        fwd = best_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          device, budget_s=budget.per_call_s)

        def step() -> None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(o, (q, k, v), grad)
        both = best_time(step, device, budget_s=budget.per_call_s)
        square = heads * seq * seq * head_dim * causal_fraction(seq)
        io = 4.0 * heads * seq * head_dim * dtype.itemsize
        samples.append(Sample("attention_fwd", key, (heads, seq, head_dim), 4.0 * square, io,
                              fwd))
        samples.append(Sample("attention_bwd", key, (heads, seq, head_dim), 10.0 * square,
                              2 * io, max(both - fwd, fwd * 1e-3)))
        return both

    for _ in _sweep(sizes, run, budget.share(0.25), budget.per_call_s):
        pass
    return samples


def memory(device: torch.device, budget: Budget, progress: Progress) -> list[Sample]:
    """Bandwidth of a device-to-device copy, of elementwise kernels (add, GELU) and of
    normalisation (LayerNorm, RMSNorm) over growing sizes, and the fixed cost of a tiny kernel
    (one launch)."""
    progress("memory bandwidth")
    dtype = torch.float32
    top = 1 << (27 if device.type == "cuda" else 25)
    sizes = [1 << e for e in range(12, 28) if 1 << e <= top]
    samples: list[Sample] = []
    width = 1024
    kernels: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], object], int]] = {
        "copy": (lambda x, y: y.copy_(x), 2),
        "elementwise": (lambda x, y: torch.add(x, y, out=y), 3),
        "gelu": (lambda x, y: F.gelu(x), 2),
        "norm": (lambda x, y: F.layer_norm(x, (width,)), 2),
        "rms_norm": (lambda x, y: F.rms_norm(x, (width,)), 2),
    }
    for name, (kernel, passes) in kernels.items():
        def run(numel: int, kernel: Callable[[torch.Tensor, torch.Tensor], object] = kernel
                ) -> float:
            x = _random((numel // width, width), dtype, device)
            y = torch.empty_like(x)
            return best_time(lambda: kernel(x, y), device,
                               budget_s=budget.per_call_s)
        kind = {"copy": "copy", "gelu": "elementwise", "rms_norm": "norm"}.get(name, name)
        limit = budget.share(0.2) / len(kernels)
        for numel, seconds in _sweep(sizes, run, limit, budget.per_call_s):
            samples.append(Sample(kind, "fp32", (numel,), 0.0,
                                  float(passes * numel * dtype.itemsize), seconds))
    tiny = _random((1,), dtype, device)

    def hundred() -> None:  # back to back, as a training step queues them
        for _ in range(100):
            tiny.add_(0.0)
    launch = best_time(hundred, device, repeats=9, warmup=2) / 100
    samples.append(Sample("launch", "fp32", (1,), 0.0, 0.0, launch))
    return samples


def all_reduce(device: torch.device, processes: int, progress: Progress) -> list[Sample]:
    """All-reduce of growing fp32 buffers across ``processes`` local ranks (gloo processes on
    a CPU, one per GPU with NCCL); seconds are the slowest rank's best of 5."""
    progress(f"all-reduce across {processes} {'GPUs' if device.type == 'cuda' else 'processes'}")
    import torch.multiprocessing as mp

    top = 1 << (28 if device.type == "cuda" else 24)
    sizes = [1 << e for e in range(10, 29, 2) if 1 << e <= top]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    try:
        mp.spawn(_all_reduce_rank, args=(processes, device.type, sizes, port, queue),
                 nprocs=processes, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        lines = str(error).strip().splitlines()
        raise MeasureError(f"all-reduce across {processes} local ranks failed: "
                           f"{lines[-1] if lines else error}; profile without it "
                           f"(--processes 1)") from None
    timings: list[tuple[int, float]] = queue.get()
    return [Sample("all_reduce", "fp32", (numel, processes), 0.0, float(4 * numel), seconds)
            for numel, seconds in timings]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _all_reduce_rank(rank: int, world: int, kind: str, sizes: list[int], port: int,
                     queue: object) -> None:
    import torch.distributed as dist

    device = torch.device(kind, rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        timings = []
        for numel in sizes:  # a fixed count of calls: every rank must make the same ones
            buffer = torch.ones(numel, device=device)
            seconds = best_time(partial(dist.all_reduce, buffer), device, repeats=5, span_s=0.0)
            # every rank must take part in every size: agree on the slowest
            agreed = torch.tensor([seconds], dtype=torch.float64, device=device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            timings.append((numel, float(agreed)))
        if rank == 0:
            queue.put(timings)  # type: ignore[attr-defined]
    finally:
        dist.destroy_process_group()
