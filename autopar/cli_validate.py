"""``autopar validate``: measure what a plan predicted, on this machine.

Without ``--run``: each stage's layers on one device, predicted against measured per layer and
per stage (``autopar.validation``). With ``--run``: the real plan on the plan's processes for a
few steps (``autopar.validation.distributed``), step time and peak memory per rank.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from autopar.cli_common import progress, read_plan
from autopar.errors import AutoparError
from autopar.files import check_writable
from autopar.plan import Plan


def add_parser(commands: Any, positive: Any) -> None:
    p = commands.add_parser(
        "validate", help="measure a plan's predictions on this machine",
        description="Run each stage's layers as one rank of the plan would (its tensor-parallel "
                    "shard, its micro-batch, the plan's precision), forward and backward, with "
                    "and without recomputation, and print predicted against measured time and "
                    "peak memory per layer and per stage. With --run, run the whole plan on its "
                    "processes for a few steps instead.")
    p.add_argument("plan", metavar="PLAN.json")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="the model the plan was made for (default: the SPEC `autopar plan` "
                        "recorded in the plan)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--profile", default=None, metavar="DEVICE.toml",
                   help="predict with this device profile (e.g. from `autopar profile`) "
                        "instead of the plan's")
    p.add_argument("--kernels", choices=["eager", "fused"], default="eager",
                   help="cost layers as one kernel per op (eager, how this run executes them; "
                        "default) or fused, as the planner did")
    p.add_argument("--repeats", type=positive, default=5, metavar="N",
                   help="timed runs per measurement; the fastest counts (default 5)")
    p.add_argument("--no-stages", action="store_true",
                   help="skip running each stage's layers chained (memory at the stage's peak)")
    p.add_argument("--update-profile", default=None, metavar="OUT.toml",
                   help="refit the profile's sustained fraction and memory efficiency to the "
                        "measurements and write it here")
    p.add_argument("--run", action="store_true", dest="run_plan",
                   help="run the real plan on its processes (torchrun) instead")
    p.add_argument("--steps", type=positive, default=3, metavar="N",
                   help="with --run: timed optimizer steps after one warm-up (default 3)")
    p.add_argument("--threads", type=positive, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's own)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_validate)


def model_source(plan: Plan, spec: str | None) -> dict[str, Any]:
    """How to load the plan's model: ``--model``, or what ``autopar plan`` recorded."""
    if spec is not None:
        return {"spec": spec}
    source = plan.model.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("spec"), str):
        raise AutoparError("the plan does not say how to load its model (it was not made by "
                           "`autopar plan`); pass --model SPEC")
    return source


def _validate(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = read_plan(args.plan)
    source = model_source(plan, args.model)
    if args.update_profile:
        check_writable(args.update_profile)

    say = progress(args.quiet)

    if args.run_plan:
        from autopar.validation.distributed import launch

        ran = launch(args.plan, plan, source, steps=args.steps, device=args.device)
        print(json.dumps(ran.model_dump(mode="json"), indent=2) if args.json else ran.table())
        return 0
    from autopar.cluster import DeviceProfile
    from autopar.files import write_atomically
    from autopar.profiling.toml_text import to_toml
    from autopar.spec import load_source
    from autopar.validation import Validation, updated_profile

    profile = DeviceProfile.from_profile(args.profile) if args.profile else None
    say(f"loading {source['spec']}")
    loaded = load_source(source)
    validation = Validation(loaded.model, plan, device=args.device, inputs=loaded.example_inputs,
                            kwargs=loaded.example_kwargs, repeats=args.repeats,
                            stages=not args.no_stages, kernels=args.kernels, progress=say)
    report = validation.report(profile)
    reports = {"report": report}
    if args.update_profile:
        device = profile or plan.cluster.groups[0].device
        refitted = updated_profile(report, device)
        write_atomically(args.update_profile, to_toml(
            refitted.model_dump(exclude_defaults=True),
            f"{device.name}, refitted by `autopar validate --update-profile` on {args.plan}"))
        reports["after_update"] = validation.report(refitted)
        say(f"refitted profile written to {args.update_profile}")
    if args.json:
        print(json.dumps({k: r.model_dump(mode="json") for k, r in reports.items()}, indent=2))
        return 0
    print(report.table())
    if "after_update" in reports:
        after = reports["after_update"].summary
        print(f"after --update-profile: time error mean "
              f"{(after['time_error_mean_abs'] or 0) * 100:.1f}%, worst "
              f"{(after['time_error_worst'] or 0) * 100:+.1f}% (written to "
              f"{args.update_profile})")
    return 0
