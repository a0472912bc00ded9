"""``autopar plan`` (search for the fastest plan and save it) and ``autopar schema``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from autopar.cli_common import (
    add_cluster_args,
    fraction,
    load_cluster,
    positive_float,
    progress,
    recompute_modes,
)
from autopar.cli_show import summary
from autopar.plan import Plan
from autopar.planner import plan
from autopar.solver.constraints import Constraints
from autopar.spec import spec_source


def add_parsers(commands: Any, model_args: Callable[[argparse.ArgumentParser], None],
                positive: Callable[[str], int],
                load_and_trace: Callable[[argparse.Namespace], Any]) -> None:
    """Register ``plan`` and ``schema``."""
    p = commands.add_parser(
        "plan", help="search for the fastest parallel plan that fits and save it",
        description="Trace a model and search data, tensor, pipeline and context parallelism, "
                    "ZeRO, schedules, stage splits and recomputation for the fastest training "
                    "step that fits the cluster's memory. Progress goes to stderr; the summary "
                    "to stdout; -o saves the plan as JSON.")
    model_args(p)
    add_cluster_args(p, positive)
    p.add_argument("--global-batch", type=positive, required=True, metavar="B",
                   help="samples (sequences) per optimizer step")
    pins = p.add_argument_group("pins and bounds (default: the solver chooses)")
    for name, help_ in (("tp", "tensor-parallel degree"), ("pp", "pipeline stages"),
                        ("dp", "data-parallel degree"), ("cp", "context-parallel degree"),
                        ("virtual-stages", "model chunks per device (interleaved)"),
                        ("micro-batch", "samples per micro-batch"),
                        ("max-tp", "largest tensor-parallel degree to consider")):
        pins.add_argument(f"--{name}", type=positive, default=None, metavar="N", help=help_)
    pins.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=None, help="ZeRO stage")
    pins.add_argument("--sp", action=argparse.BooleanOptionalAction, default=None,
                      help="require (--sp) or forbid (--no-sp) sequence parallelism")
    pins.add_argument("--schedule", choices=["gpipe", "1f1b", "interleaved", "zero_bubble"],
                      default=None)
    pins.add_argument("--recompute", type=recompute_modes, default=None, metavar="MODES",
                      help="recomputation modes a layer may get, e.g. none,selective")
    pins.add_argument("--headroom", type=fraction, default=0.0, metavar="F",
                      help="share of device memory to leave free (default 0)")
    pins.add_argument("--allow-idle-nodes", action="store_true",
                      help="the plan may leave whole nodes idle where that is faster or the "
                           "only way to divide the batch")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--time-limit", type=positive_float, default=None, metavar="S",
                   help="return within about S seconds, tracing included, with the best plan "
                   "found and its proven gap")
    p.add_argument("-o", "--output", metavar="PLAN.json", help="save the plan here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print the plan JSON, not the summary")
    p.set_defaults(run=lambda args: _plan(args, load_and_trace))

    s = commands.add_parser(
        "schema", help="print the JSON Schema of plan files",
        description="Print the JSON Schema that every plan file validates against.")
    s.add_argument("--json", action="store_true", help="(the schema is always JSON)")
    s.set_defaults(run=_schema)


def constraints_from(args: argparse.Namespace) -> Constraints:
    """The pins and bounds the command line gives."""
    fields: dict[str, Any] = {
        "tp": args.tp, "pp": args.pp, "dp": args.dp, "cp": args.cp,
        "zero_stage": args.zero, "sequence_parallel": args.sp, "schedule": args.schedule,
        "virtual_stages": args.virtual_stages, "micro_batch_size": args.micro_batch,
        "max_tp": args.max_tp, "memory_headroom": args.headroom,
        "allow_idle_devices": args.allow_idle_nodes}
    if args.recompute is not None:
        fields["recompute"] = args.recompute
    return Constraints(**fields)


def _plan(args: argparse.Namespace, load_and_trace: Callable[[argparse.Namespace], Any]) -> int:
    cluster = load_cluster(args.cluster, args.nodes)  # cheap checks first, then the trace
    rules = constraints_from(args)

    say = progress(args.quiet)
    say(f"tracing {args.model}")
    _, graph = load_and_trace(args)
    say(f"searching plans for {cluster.summary()}")
    result = plan(graph, cluster, global_batch_size=args.global_batch,
                  precision=args.precision, optimizer=args.optimizer, constraints=rules,
                  time_limit_s=args.time_limit, progress=say)
    # How to load the model again (`autopar validate` needs it): the SPEC as given.
    source = spec_source(args.model, batch_size=args.batch, seq_len=args.seq_len)
    result = result.model_copy(update={"model": {**result.model, "source": source}})
    if args.output:
        result.save(args.output)
        say(f"plan saved to {args.output}")
    print(result.to_json().rstrip() if args.json else summary(result))
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Plan.model_json_schema(), indent=2, sort_keys=True))
    return 0
