"""``autopar estimate``: the predicted step time and memory of one configuration, as a table or
JSON (what-if analysis before renting the cluster)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from autopar.cluster import Cluster
from autopar.config import ParallelConfig
from autopar.estimate import Estimate, estimate


def add_parser(commands: Any, model_args: Callable[[argparse.ArgumentParser], None],
               positive: Callable[[str], int], run: Callable[[argparse.Namespace], int]) -> None:
    """Register the ``estimate`` subcommand."""
    p = commands.add_parser(
        "estimate", help="predict step time and memory of one parallel configuration",
        description="Trace a model and predict one training step of the given parallel "
                    "configuration on a cluster: time with its breakdown, throughput, MFU and "
                    "memory per device.")
    model_args(p)
    p.add_argument("--cluster", required=True, metavar="PRESET_OR_FILE",
                   help="a bundled preset (e.g. dgx-h100) or a cluster TOML file")
    p.add_argument("--nodes", type=positive, default=1, help="nodes of a preset (default 1)")
    p.add_argument("--global-batch", type=positive, required=True, metavar="B",
                   help="samples (sequences) per optimizer step")
    for name, help_ in (("dp", "data-parallel degree"), ("tp", "tensor-parallel degree"),
                        ("pp", "pipeline stages"), ("cp", "context-parallel degree"),
                        ("virtual-stages", "model chunks per device (interleaved schedule)"),
                        ("micro-batch", "samples per micro-batch")):
        p.add_argument(f"--{name}", type=positive, default=1, help=f"{help_} (default 1)")
    p.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=0, help="ZeRO stage")
    p.add_argument("--sp", action="store_true", help="sequence parallelism (needs --tp > 1)")
    p.add_argument("--schedule", choices=["gpipe", "1f1b", "interleaved", "zero_bubble"],
                   default="1f1b")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> ParallelConfig:
    """The ParallelConfig the command line describes."""
    return ParallelConfig(dp=args.dp, tp=args.tp, pp=args.pp, cp=args.cp,
                          zero_stage=args.zero, sequence_parallel=args.sp,
                          schedule=args.schedule, virtual_stages=args.virtual_stages,
                          recompute=args.recompute, micro_batch_size=args.micro_batch)


def run_estimate(args: argparse.Namespace, graph: Any) -> Estimate:
    """Load the cluster and estimate the configuration on the traced graph."""
    cluster = Cluster.from_profile(args.cluster, nodes=args.nodes)
    return estimate(graph, cluster, config_from(args), global_batch_size=args.global_batch,
                    precision=args.precision, optimizer=args.optimizer)


def report(est: Estimate, as_json: bool) -> str:
    """The estimate as text a person reads, or as JSON."""
    if as_json:
        return json.dumps(est.model_dump(mode="json"), indent=2)
    gib = 2**30
    lines = [f"step time      {est.step_time:.3f} s",
             f"throughput     {est.samples_per_s:,.2f} samples/s, {est.tokens_per_s:,.0f} "
             f"tokens/s",
             f"model TFLOP/s  {est.model_tflops_per_device:.1f} per device (MFU "
             f"{100 * est.mfu:.1f}%)",
             "", "time breakdown:"]
    for name, value in est.breakdown.items():
        lines.append(f"  {name:10s} {value:10.3f} s  {100 * value / est.step_time:5.1f}%")
    lines += ["", f"memory per device (peak stage): {est.peak_memory / gib:.2f} GiB of "
              f"{est.capacity / gib:.2f} GiB: {'fits' if est.fits else 'DOES NOT FIT'}"]
    for name, value in est.memory.items():
        lines.append(f"  {name:12s} {value / gib:8.2f} GiB")
    return "\n".join(lines)
