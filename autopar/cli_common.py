"""Helpers the ``autopar`` subcommands share: clusters by preset or file, number arguments,
reading plan files, and short names for layer lists."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from autopar.cluster import Cluster
from autopar.errors import AutoparError
from autopar.plan import Plan

GiB = 2**30


def progress(quiet: bool, *, clock: bool = False) -> Callable[[str], None]:
    """The progress printer of a subcommand: ``autopar: [seconds since start] line`` on stderr,
    nothing with ``-q``."""
    started = time.perf_counter()

    def say(line: str) -> None:
        if quiet:
            return
        stamp = f"{time.perf_counter() - started:5.1f}s " if clock else ""
        print(f"autopar: {stamp}{line}", file=sys.stderr, flush=True)
    return say


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def recompute_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ("none", "selective", "full")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of none, selective, full; got {text!r}")
    return modes


def add_cluster_args(p: argparse.ArgumentParser, positive: object) -> None:
    p.add_argument("--cluster", required=True, metavar="PRESET_OR_FILE",
                   help="a bundled preset (e.g. dgx-h100) or a cluster TOML file")
    p.add_argument("--nodes", type=positive, default=None,  # type: ignore[arg-type]
                   help="nodes (a preset describes one node; a file keeps its own count)")


def load_cluster(spec: str, nodes: int | None) -> Cluster:
    """A preset by name or a cluster TOML file by path, with ``nodes`` nodes if given."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise AutoparError(f"cluster file {spec} does not exist; give a TOML file or a "
                               "preset name such as dgx-h100")
        cluster = Cluster.load(path)
        return cluster.with_nodes(nodes) if nodes is not None else cluster
    return Cluster.from_profile(spec, nodes=nodes)


def read_plan(path: str) -> Plan:
    return Plan.load(path)


def layer_ranges(names: list[str]) -> str:
    """``model.layers.0 .. model.layers.7`` as ``model.layers.0-7``; other names as they are."""
    parts: list[str] = []
    run: tuple[str, int, int] | None = None
    for name in names:
        match = re.fullmatch(r"(.*\.)(\d+)", name)
        if match and run and run[0] == match[1] and run[2] + 1 == int(match[2]):
            run = (run[0], run[1], int(match[2]))
            continue
        if run:
            parts.append(_run_text(run))
            run = None
        if match:
            run = (match[1], int(match[2]), int(match[2]))
        else:
            parts.append(name)
    if run:
        parts.append(_run_text(run))
    return ", ".join(parts)


def _run_text(run: tuple[str, int, int]) -> str:
    prefix, first, last = run
    return f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}"


def config_text(c: object) -> str:
    """A configuration on one line: ``dp=2 tp=4+sp pp=2 cp=1 zero=1 1f1b mb=2 rc=none``."""
    from autopar.config import ParallelConfig

    assert isinstance(c, ParallelConfig)
    tp = f"tp={c.tp}{'+sp' if c.sequence_parallel else ''}"
    sched = c.schedule + (f"x{c.virtual_stages}" if c.virtual_stages > 1 else "")
    rc: str
    if isinstance(c.recompute, str):
        rc = c.recompute
    else:
        counts = {m: c.recompute.count(m) for m in ("none", "selective", "full")
                  if m in c.recompute}
        rc = "/".join(f"{m}:{n}" for m, n in counts.items())
    split = f" split={'/'.join(map(str, c.layers_per_stage))}" if c.layers_per_stage else ""
    return (f"dp={c.dp} {tp} pp={c.pp} cp={c.cp} zero={c.zero_stage} {sched} "
            f"mb={c.micro_batch_size} rc={rc}{split}")
