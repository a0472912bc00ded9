"""``autopar show`` (a plan file as a readable summary) and ``autopar compare`` (several
configurations or plan files side by side)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from autopar.cli_common import GiB, add_cluster_args, config_text, layer_ranges, load_cluster
from autopar.config import ConfigError, ParallelConfig
from autopar.estimate import Estimate, estimate
from autopar.plan import Plan
from autopar.table import render


def add_parsers(commands: Any, model_args: Callable[[argparse.ArgumentParser], None],
                positive: Callable[[str], int],
                load_and_trace: Callable[[argparse.Namespace], Any]) -> None:
    """Register ``show`` and ``compare``."""
    s = commands.add_parser(
        "show", help="summarise a plan file",
        description="Print a plan: its mesh, each pipeline stage with its layers, time and "
                    "memory, the step-time breakdown, and why it beat the runners-up.")
    s.add_argument("plan", metavar="PLAN.json")
    s.add_argument("--json", action="store_true", help="print the validated plan as JSON")
    s.set_defaults(run=_show)

    c = commands.add_parser(
        "compare", help="compare configurations or plan files side by side",
        description="Predict several configurations (--config, on one traced model) and/or "
                    "read plan files, and print them side by side. A --config is a comma "
                    "list such as 'tp=8,pp=2,zero=1,sp,schedule=interleaved,vs=2,mb=1,"
                    "recompute=selective'; dp defaults to what fills the cluster.")
    c.add_argument("plans", nargs="*", metavar="PLAN.json", help="plan files to include")
    c.add_argument("--config", action="append", default=[], metavar="SPEC",
                   help="a configuration to predict (repeatable; needs --model, --cluster, "
                        "--global-batch)")
    c.add_argument("--model", metavar="SPEC", help="the model, as for `autopar inspect`")
    c.add_argument("--batch", type=positive, default=None, help=argparse.SUPPRESS)
    c.add_argument("--seq-len", type=positive, default=None, metavar="S",
                   help="sequence length (as for `autopar inspect`)")
    add_cluster_args(c, positive)
    c.set_defaults(cluster=None)
    for action in c._actions:
        if action.dest == "cluster":
            action.required = False
    c.add_argument("--global-batch", type=positive, default=None, metavar="B")
    c.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    c.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    c.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    c.set_defaults(run=lambda args: _compare(args, load_and_trace))


def _show(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    print(plan.to_json().rstrip() if args.json else summary(plan))
    return 0


def summary(plan: Plan) -> str:
    """A plan as text: what runs where, what it is predicted to do, and why it was chosen."""
    c, e, model = plan.config, plan.estimate, plan.model
    params = model.get("parameters")
    size = f"{params / 1e9:.2f}B parameters, " if isinstance(params, int) else ""
    mb = plan.micro_batching
    dp = plan.data_parallel
    out = [
        f"plan for {model.get('name')} ({size}{model.get('layers')} layers)",
        f"  cluster    {plan.cluster.summary()}",
        f"  batch      {plan.global_batch_size} samples/step: {c.dp} replica(s) x "
        f"{mb.micro_batches} micro-batches of {mb.micro_batch_size}; {plan.precision}, "
        f"{plan.optimizer}",
        f"  config     {config_text(c)}",
        f"  dp         {dp.strategy} (ZeRO-{dp.zero_stage}) over {dp.group_size} ranks"
        + (f", sharding {', '.join(dp.sharded)}" if dp.sharded else ", replicated"),
        f"  schedule   {mb.schedule}" + (f", {mb.virtual_stages} chunks per device"
                                         if mb.virtual_stages > 1 else ""),
        "  mesh       " + " x ".join(f"{d} {n}" for d, n in zip(plan.mesh.dims,
                                                                  plan.mesh.shape, strict=True))
        + " (tp innermost: a tp group sits on adjacent devices)",
        "",
        f"predicted: {e.step_time:.3f} s/step, {e.samples_per_s:,.2f} samples/s, "
        f"{e.tokens_per_s:,.0f} tokens/s, MFU {100 * e.mfu:.1f}%, peak memory "
        f"{e.peak_memory / GiB:.1f} of {e.capacity / GiB:.1f} GiB "
        f"({'fits' if e.fits else 'DOES NOT FIT'})",
        _solver_line(plan),
        "",
        "stages:",
    ]
    rows = []
    for st in plan.stages:
        nodes = sorted({plan.mesh.ranks[r].node for r in st.ranks})
        rows.append([str(st.stage), _span(st.ranks), _span(nodes), st.device,
                     str(len(st.layers)), f"{st.time_s:.3f}",
                     f"{sum(st.memory.values()) / GiB:.1f}/{st.capacity / GiB:.0f}",
                     _shorten(layer_ranges(st.layers), 70)])
    out.append(_indent(render(["stage", "ranks", "nodes", "device", "layers", "busy s",
                               "mem GiB", "layer names"], rows, align="rrrlrrrl")))
    recompute = {m: sum(1 for v in plan.recompute.values() if v == m)
                 for m in ("selective", "full")}
    if any(recompute.values()):
        out.append("  recompute: " + "; ".join(
            f"{m} on {layer_ranges([k for k, v in plan.recompute.items() if v == m])}"
            for m, n in recompute.items() if n))
    tp_styles = sorted({m.style for m in plan.sharding if m.style != "replicate"})
    if tp_styles and c.tp > 1:
        out.append(f"  tensor parallel: {len(plan.sharding)} modules; styles "
                   f"{', '.join(tp_styles)} (see the plan's sharding)")
    out += ["", "time breakdown (busiest stage):"]
    out.append(_indent(render(["part", "seconds", "share"], [
        [k, f"{v:.4f}", f"{100 * v / e.step_time:.1f}%"] for k, v in e.breakdown.items()],
        footer=[["step", f"{e.step_time:.4f}", "100.0%"]])))
    out += ["", "memory per device (tightest stage):"]
    out.append(_indent(render(["kind", "GiB"], [[k, f"{v / GiB:.2f}"]
                                                for k, v in e.memory.items()],
                              footer=[["total", f"{e.peak_memory / GiB:.2f}"],
                                      ["capacity", f"{e.capacity / GiB:.2f}"]])))
    out += ["", *why(plan)]
    return "\n".join(out)


def why(plan: Plan) -> list[str]:
    """Why the plan beat each runner-up: how much slower it is, which parts of the step
    grow most, and how its configuration differs."""
    if not plan.runners_up:
        return ["no runners-up were recorded"]
    lines = ["why this plan: the runners-up and what they cost"]
    base = plan.estimate
    for r in plan.runners_up:
        slower = r.estimate.step_time / base.step_time - 1
        deltas = sorted(((r.estimate.breakdown[k] - base.breakdown.get(k, 0.0), k)
                         for k in r.estimate.breakdown), reverse=True)
        grew = [f"{k} +{d * 1e3:.1f} ms" for d, k in deltas[:2] if d > 1e-9]
        diff = _config_diff(plan.config, r.config)
        extra = (r.estimate.step_time - base.step_time) * 1e3
        verdict = (f"+{extra:.2f} ms, +{100 * slower:.2f}%" if slower > 1e-9
                   else "a tie under the cost model; the search keeps the first found")
        lines.append(f"  {config_text(r.config)}: {r.estimate.step_time:.4f} s ({verdict})"
                     + (f"; {', '.join(grew)}" if grew else "")
                     + (f"; differs in {diff}" if diff else ""))
    return lines


def _config_diff(a: ParallelConfig, b: ParallelConfig) -> str:
    changes = []
    for name in ParallelConfig.model_fields:
        x, y = getattr(a, name), getattr(b, name)
        if x != y and name not in ("layers_per_stage", "recompute"):
            changes.append(f"{name} {x}->{y}")
    if a.recompute != b.recompute:
        changes.append("recompute")
    if a.layers_per_stage != b.layers_per_stage:
        changes.append("stage split")
    return ", ".join(changes)


def _solver_line(plan: Plan) -> str:
    s = plan.solver
    proof = "proven optimal under the cost model" if s.optimal else (
        f"best found within the time limit; proven within {100 * s.gap:.1f}% of optimal")
    return (f"solver: {proof}; lower bound {s.lower_bound_s:.3f} s; {s.candidates} candidate "
            f"splits costed, {s.pruned_by_time} shapes pruned by time, {s.pruned_by_memory} "
            f"by memory")


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else (f"{lo}-{hi}" if len(values) == hi - lo + 1
                                     else ",".join(map(str, values)))


def _shorten(text: str, width: int) -> str:
    """At most ``width`` characters, cut at a comma, saying how many names were left out."""
    if len(text) <= width:
        return text
    names = text.split(", ")
    kept: list[str] = []
    while names and len(", ".join([*kept, names[0]])) <= width - 12:
        kept.append(names.pop(0))
    return ", ".join(kept) + f", ... (+{len(names)})"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


_KEYS = {"dp": "dp", "tp": "tp", "pp": "pp", "cp": "cp", "zero": "zero_stage",
         "zero_stage": "zero_stage", "vs": "virtual_stages", "virtual_stages": "virtual_stages",
         "mb": "micro_batch_size", "micro_batch": "micro_batch_size",
         "micro_batch_size": "micro_batch_size", "schedule": "schedule",
         "recompute": "recompute", "sp": "sequence_parallel"}


def parse_config(text: str, world_size: int) -> ParallelConfig:
    """``tp=8,pp=2,sp,...`` as a ParallelConfig; dp fills the cluster when not given."""
    fields: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in _KEYS:
            raise ConfigError(f"--config {text!r}: unknown key {key!r}; use "
                              f"{', '.join(sorted(set(_KEYS) - {'zero_stage'}))}")
        name = _KEYS[key]
        if name == "sequence_parallel":
            fields[name] = value.strip().lower() not in ("0", "false", "no", "off") if eq \
                else True
        elif name in ("schedule", "recompute"):
            fields[name] = value.strip()
        else:
            try:
                fields[name] = int(value)
            except ValueError:
                raise ConfigError(f"--config {text!r}: {key} must be a whole number, got "
                                  f"{value!r}") from None
    if "dp" not in fields:
        other = fields.get("tp", 1) * fields.get("pp", 1) * fields.get("cp", 1)
        fields["dp"] = max(1, world_size // max(other, 1))
    return ParallelConfig(**fields)


def _compare(args: argparse.Namespace,
             load_and_trace: Callable[[argparse.Namespace], Any]) -> int:
    entries: list[tuple[str, ParallelConfig, Estimate]] = []
    plans = [Plan.load(p) for p in args.plans]
    if args.config:
        missing = [f"--{n.replace('_', '-')}" for n in ("model", "cluster", "global_batch")
                   if getattr(args, n) is None]
        if missing:
            raise ConfigError(f"--config needs {', '.join(missing)} to predict it")
        cluster = load_cluster(args.cluster, args.nodes)
        configs = [parse_config(t, cluster.world_size) for t in args.config]
        _, graph = load_and_trace(args)
        for text, config in zip(args.config, configs, strict=True):
            entries.append((text, config, estimate(
                graph, cluster, config, global_batch_size=args.global_batch,
                precision=args.precision, optimizer=args.optimizer)))
    for path, plan in zip(args.plans, plans, strict=True):
        entries.append((path, plan.config, plan.estimate))
    if not entries:
        raise ConfigError("nothing to compare: give plan files and/or --config SPEC options")
    if args.json:
        print(json.dumps([{"name": n, "config": c.model_dump(mode="json"),
                           "estimate": e.model_dump(mode="json")} for n, c, e in entries],
                         indent=2))
        return 0
    print(compare_table(entries))
    return 0


def compare_table(entries: list[tuple[str, ParallelConfig, Estimate]]) -> str:
    """Metrics as rows, configurations as columns; the fastest that fits is marked."""
    fitting = [e.step_time for _, _, e in entries if e.fits]
    best = min(fitting) if fitting else None
    headers = ["", *(f"[{i + 1}]" + (" *" if best is not None and e.fits
                                      and e.step_time == best else "")
                     for i, (_, _, e) in enumerate(entries))]
    rows: list[list[str]] = []

    def row(label: str, f: Callable[[ParallelConfig, Estimate], str]) -> None:
        rows.append([label, *(f(c, e) for _, c, e in entries)])

    row("dp x tp x pp x cp", lambda c, e: f"{c.dp}x{c.tp}x{c.pp}x{c.cp}")
    row("ZeRO", lambda c, e: str(c.zero_stage))
    row("sequence parallel", lambda c, e: "yes" if c.sequence_parallel else "no")
    row("schedule", lambda c, e: c.schedule + (f" x{c.virtual_stages}"
                                               if c.virtual_stages > 1 else ""))
    row("micro-batch", lambda c, e: str(c.micro_batch_size))
    row("recompute", lambda c, e: c.recompute if isinstance(c.recompute, str) else "per layer")
    row("step time ms", lambda c, e: f"{e.step_time * 1e3:,.2f}")
    for part in entries[0][2].breakdown:
        rows.append([f"  {part}", *(f"{e.breakdown.get(part, 0.0) * 1e3:,.2f}"
                                    for _, _, e in entries)])
    row("samples/s", lambda c, e: f"{e.samples_per_s:,.2f}")
    row("tokens/s", lambda c, e: f"{e.tokens_per_s:,.0f}")
    row("MFU", lambda c, e: f"{100 * e.mfu:.1f}%")
    row("peak memory GiB", lambda c, e: f"{e.peak_memory / GiB:.1f}/{e.capacity / GiB:.0f}")
    row("fits", lambda c, e: "yes" if e.fits else "NO")
    names = [f"[{i + 1}] {name}" for i, (name, _, _) in enumerate(entries)]
    legend = "* fastest that fits" if best is not None else "nothing fits"
    return "\n".join([render(headers, rows, align="l" + "r" * len(entries)), "", *names,
                      legend])
