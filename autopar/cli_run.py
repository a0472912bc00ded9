"""``autopar run plan.json -- train.py [args]``: launch a training script under a plan with
``torchrun``: on this machine when the plan fits on one node, and the exact per-node commands
for a multi-node cluster. The script finds the plan in ``$AUTOPAR_PLAN``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Any

from autopar.errors import AutoparError
from autopar.plan import Plan


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master-addr", default="MASTER_HOST",
                   help="address of node 0 in the printed multi-node commands")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--node-rank", type=int, default=None,
                   help="run this node's command of a multi-node plan here")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands without running anything")


def add_parser(commands: Any) -> None:
    """Register the ``run`` subcommand."""
    p = commands.add_parser(
        "run", help="launch a training script under a plan with torchrun",
        description="Launch `torchrun` with the plan's process count on this machine (a "
                    "one-node plan), or print the torchrun command of every node of a "
                    "multi-node cluster. The script reads the plan path from $AUTOPAR_PLAN.")
    p.add_argument("plan", help="plan JSON file (from `autopar plan`)")
    p.add_argument("script", nargs=argparse.REMAINDER,
                   help="-- train.py [args]: the script and its arguments")
    _options(p)
    p.set_defaults(run=run)


def node_layout(plan: Plan) -> tuple[int, int]:
    """(nodes, processes per node) of the plan's cluster; one node when it does not say."""
    world = plan.world_size
    groups = getattr(plan.cluster, "groups", None)
    per_node = getattr(groups[0], "devices_per_node", world) if groups else world
    per_node = max(1, min(int(per_node), world))
    nodes, rest = divmod(world, per_node)
    if rest:
        raise AutoparError(f"the plan's {world} processes do not fill nodes of {per_node} "
                           "devices evenly; re-plan for whole nodes")
    return nodes, per_node


def torchrun_commands(plan_path: str, plan: Plan, script: list[str], master_addr: str,
                      master_port: int) -> list[list[str]]:
    """The torchrun command line of each node, in node-rank order."""
    nodes, per_node = node_layout(plan)
    if nodes == 1:
        return [["torchrun", "--standalone", f"--nproc-per-node={per_node}", *script]]
    return [["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
             f"--node-rank={rank}", f"--master-addr={master_addr}",
             f"--master-port={master_port}", *script] for rank in range(nodes)]


def run(args: argparse.Namespace) -> int:
    script = list(args.script)
    if "--" in script:  # options given after the plan, before "--"
        cut = script.index("--")
        own = argparse.ArgumentParser(prog="autopar run", add_help=False)
        _options(own)
        try:
            own.parse_args(script[:cut], namespace=args)
        except SystemExit:
            raise AutoparError(f"unknown options before --: {script[:cut]}") from None
        script = script[cut + 1:]
    if not script:
        raise AutoparError("no training script given: use `autopar run plan.json -- train.py`")
    plan_path = os.path.abspath(args.plan)
    plan = Plan.load(plan_path)
    commands = torchrun_commands(plan_path, plan, script, args.master_addr, args.master_port)
    env = f"AUTOPAR_PLAN={shlex.quote(plan_path)}"
    if len(commands) > 1 and args.node_rank is None or args.dry_run:
        for rank, cmd in enumerate(commands):
            where = f"# node {rank}" if len(commands) > 1 else "# this machine"
            print(f"{where}\n{env} {shlex.join(cmd)}")
        return 0
    cmd = commands[args.node_rank or 0]
    launch = [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
    return subprocess.call(launch, env={**os.environ, "AUTOPAR_PLAN": plan_path})
