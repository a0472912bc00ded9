"""``autopar validate --run``: run the real plan on its processes and compare per rank.

``launch`` starts ``torchrun`` with the plan's process count on this machine, running this
module as the worker: each rank loads the model, applies the plan with
``autopar.parallelize``, takes one warm-up optimizer step and ``steps`` timed ones on a
synthetic global batch (the loss is the mean square of the output: the executor's work does
not depend on the loss), and reports its step time (median) and peak memory. Peak memory on a
GPU is the caching allocator's peak; on a CPU it is the bytes of the rank's parameters,
gradients and optimizer state plus the allocator's peak above them during a step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from autopar.plan import Plan
from autopar.profiling.measure import resolve_device
from autopar.table import render
from autopar.validation.local_layers import ValidationError, with_rows
from autopar.validation.report import Compared, percent


class RankRow(Compared):
    """One rank of the real run."""

    rank: int
    stage: int
    predicted_step_s: float
    measured_step_s: float
    predicted_peak_bytes: float
    measured_peak_bytes: float

    def times(self) -> tuple[float, float]:
        return self.predicted_step_s, self.measured_step_s

    def peaks(self) -> tuple[float, float]:
        return self.predicted_peak_bytes, self.measured_peak_bytes


class RunReport(BaseModel):
    """Step time and peak memory of every rank of a real run of the plan."""

    model_config = ConfigDict(frozen=True)

    device: str
    steps: int
    ranks: list[RankRow]

    def table(self) -> str:
        rows = [[str(r.rank), str(r.stage), f"{r.predicted_step_s * 1e3:.1f}",
                 f"{r.measured_step_s * 1e3:.1f}", percent(r.time_error),
                 f"{r.predicted_peak_bytes / 1e6:.1f}", f"{r.measured_peak_bytes / 1e6:.1f}",
                 percent(r.peak_error)] for r in self.ranks]
        table = render(["rank", "stage", "step ms pred", "step ms meas", "time err",
                        "peak MB pred", "peak MB meas", "peak err"], rows, align="rrrrrrrr")
        return (f"ran the plan on {len(self.ranks)} processes ({self.device}), median of "
                f"{self.steps} steps after one warm-up; peak memory is allocated bytes (the "
                f"plan's framework overhead excluded)\n\n{table}")


def launch(plan_path: str, plan: Plan, source: dict[str, Any], *, steps: int,
           device: str = "cpu") -> RunReport:
    """Run the plan under ``torchrun`` on this machine and collect every rank's figures."""
    if plan.cluster.num_nodes > 1:
        raise ValidationError(f"the plan spans {plan.cluster.num_nodes} nodes; --run runs on "
                              "this machine only: validate its layers without --run, or run "
                              "a one-node plan")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    import torch

    if resolve_device(device).type == "cuda" and plan.world_size > torch.cuda.device_count():
        raise ValidationError(f"the plan has {plan.world_size} processes and this machine "
                              f"{torch.cuda.device_count()} CUDA devices; --run needs one per "
                              "process: run it with --device cpu, or validate without --run")
    if resolve_device(device).type == "cpu":
        # The executor takes a GPU whenever it sees one: hide them, or every rank would
        # share the first (NCCL refuses) although the CPU was asked for.
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={plan.world_size}", "-m", "autopar.validation.distributed",
                   plan_path, "--source", json.dumps(source), "--steps", str(steps),
                   "--device", device, "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not out.exists():
            lines = done.stderr.splitlines()
            errors = ([line for line in lines if line.startswith("[rank") and "Error" in line]
                      or [line for line in lines if "Error" in line])
            last = errors[-1].strip() if errors else done.stderr.strip()[-300:]
            raise ValidationError(f"the run of the plan failed (exit {done.returncode}): {last}")
        figures = json.loads(out.read_text())
    ranks = [RankRow(rank=r["rank"], stage=r["stage"],
                     predicted_step_s=plan.estimate.step_time, measured_step_s=r["step_s"],
                     predicted_peak_bytes=_allocated(plan.stages[r["stage"]].memory),
                     measured_peak_bytes=r["peak_bytes"]) for r in figures["ranks"]]
    return RunReport(device=figures["device"], steps=steps, ranks=ranks)


def _allocated(memory: dict[str, float]) -> float:
    """What the plan predicts the allocator holds: everything but the framework overhead
    (CUDA context, fragmentation), which no allocator counter includes."""
    return sum(v for k, v in memory.items() if k != "overhead")


def _worker(plan_path: str, source: dict[str, Any], steps: int, device: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import autopar
    from autopar.profiling.measure import peak_memory
    from autopar.spec import load_source

    plan = Plan.load(plan_path)
    loaded = load_source(source)
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    job = autopar.parallelize(loaded.model, plan, init_weights=_random_weights)
    optimizer = job.build_optimizer()
    batch = _global_batch(loaded.example_inputs, plan.global_batch_size)
    # The loss ignores the target, but the executor splits it like the input (by sequence
    # under context parallelism): give it the input's leading dimensions.
    target = torch.zeros(batch.shape[:2] if batch.dim() >= 2 else batch.shape[:1])

    def loss_fn(output: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return output.float().square().mean()

    def step() -> None:
        job.train_step((batch, target), loss_fn)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state exists from here on
    times = []
    for _ in range(steps):
        _sync(job.device)
        dist.barrier()
        begin = time.perf_counter()
        step()
        _sync(job.device)
        times.append(time.perf_counter() - begin)
    if job.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(job.device)
        step()
        peak = int(torch.cuda.max_memory_allocated(job.device))
    else:
        peak = _state_bytes(job, optimizer) + peak_memory(step, job.device)
    mine = {"rank": dist.get_rank(), "stage": job.coordinate("pp"),
            "step_s": statistics.median(times), "peak_bytes": peak}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        name = (torch.cuda.get_device_name(job.device) if job.device.type == "cuda"
                else f"cpu, {torch.get_num_threads()} threads per process")
        Path(out).write_text(json.dumps({"device": name, "ranks": gathered}))
    dist.destroy_process_group()


def _random_weights(module: Any) -> None:
    """Any finite values: a step's time and memory do not depend on them."""
    for t in [*module.parameters(), *module.buffers()]:
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.is_floating_point():
            local.normal_(0.0, 0.02)


def _global_batch(inputs: tuple[Any, ...], rows: int) -> Any:
    """The example inputs grown (or cut) to ``rows`` samples along dim 0."""
    import torch

    first = inputs[0]
    assert isinstance(first, torch.Tensor)
    grown = with_rows(first, rows)
    if grown.device.type == "meta":
        grown = torch.zeros(grown.shape, dtype=grown.dtype)
    return grown


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(job: Any, optimizer: Any) -> int:
    """Bytes of this rank's parameters and optimizer state (local shards only)."""
    import torch

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = sum(local(p).numel() * p.element_size() for p in job.parameters())
    for opt in optimizer.optimizers:
        for state in opt.state.values():
            total += sum(local(v).numel() * v.element_size() for v in state.values()
                         if isinstance(v, torch.Tensor))
    return int(total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("plan")
    parser.add_argument("--source", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    _worker(args.plan, json.loads(args.source), args.steps, args.device, args.out)


if __name__ == "__main__":
    main()
