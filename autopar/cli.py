"""The ``autopar`` command line: a thin shell over the library for people without a script.

Each subcommand loads a model from a SPEC (see ``autopar.spec``) and calls the same library
functions a script would, so the CLI never knows more than the library does. Errors a user can
fix (``AutoparError``) become one line on stderr and exit status 2, without a traceback; a
traceback means a bug in autopar.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from autopar import (
    Layer,
    ModelGraph,
    TraceFallbackWarning,
    __version__,
    cli_estimate,
    cli_plan,
    cli_profile,
    cli_report,
    cli_show,
    cli_validate,
    trace,
)
from autopar.errors import AutoparError
from autopar.spec import LoadedModel, load_spec
from autopar.table import render

_COLLAPSE_MIN = 3  # shorter runs of identical copies are shown row by row


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong, and where the help is), like
    every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        print(f"autopar: error: {self.prog}: {message} (see `{self.prog} --help`)",
              file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate from ``main`` so docs and tests can inspect it)."""
    parser = _Parser(
        prog="autopar", description="Plan how to parallelise a PyTorch model's training.")
    parser.add_argument("--version", action="version", version=f"autopar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect", help="trace a model and show its layers and costs",
        description="Trace one training step of a model (on the meta device: nothing is "
                    "allocated) and print its pipeline layers with per-sample costs.")
    _model_args(inspect)
    inspect.add_argument("--json", action="store_true",
                         help="print the summary and every layer as JSON instead of a table")
    inspect.set_defaults(run=_inspect)
    cli_estimate.add_parser(commands, _model_args, _positive_int, _estimate)
    cli_plan.add_parsers(commands, _model_args, _positive_int, _load_and_trace)
    cli_show.add_parsers(commands, _model_args, _positive_int, _load_and_trace)
    cli_report.add_parser(commands)
    cli_profile.add_parser(commands, _positive_int)
    cli_validate.add_parser(commands, _positive_int)
    from autopar import cli_run  # the executor's launcher
    cli_run.add_parser(commands)
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    """The arguments that say which model to load and at which batch and sequence."""
    parser.add_argument(
        "--model", required=True, metavar="SPEC",
        help="path/to/file.py:FUNCTION, package.module:FUNCTION or a Hugging Face "
             "config.json; FUNCTION returns (model, example_inputs[, example_kwargs])")
    parser.add_argument("--batch", type=_positive_int, default=None, metavar="N",
                        help="samples in the traced batch (default: the factory's own; 1 for "
                             "config.json)")
    parser.add_argument("--seq-len", type=_positive_int, default=None, metavar="S",
                        help="sequence length (default for config.json: the model's maximum "
                             "positions, at most 2048)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any error the user can fix)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help already
        return exc.code if isinstance(exc.code, int) else 0
    try:
        status: int = args.run(args)
    except AutoparError as exc:
        print(f"autopar: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return status


def _one_line(message: object) -> str:
    """A message on one line, so a CLI error or warning is exactly one line of stderr."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text or type(message).__name__


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs config notices while tracing; they are noise on a report."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load_and_trace(args: argparse.Namespace) -> tuple[LoadedModel, ModelGraph]:
    """Load and trace; trace warnings print as one line each, and only if it succeeded."""
    with warnings.catch_warnings(record=True) as caught:
        loaded = load_spec(args.model, batch_size=args.batch, seq_len=args.seq_len)
        with _quiet_transformers():  # after load_spec: importing transformers resets its level
            graph = trace(loaded.model, loaded.example_inputs, loaded.example_kwargs)
    for w in caught:
        if issubclass(w.category, TraceFallbackWarning):
            print(f"autopar: warning: {_one_line(w.message)}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return loaded, graph


def _inspect(args: argparse.Namespace) -> int:
    loaded, graph = _load_and_trace(args)
    if args.json:
        payload = {"summary": graph.summary(),
                   "layers": [layer.model_dump(mode="json") for layer in graph.layers]}
        print(json.dumps(payload, indent=2))
    else:
        print(inspect_report(graph, loaded.name))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    _, graph = _load_and_trace(args)
    print(cli_estimate.report(cli_estimate.run_estimate(args, graph), args.json))
    return 0


def _count(n: int) -> str:
    """Parameter counts the way people say them: 16,640 / 218.1M / 8.03B."""
    if n < 10_000:
        return f"{n:,}"
    for scale, suffix, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if n >= scale:
            return f"{n / scale:,.{digits}f}{suffix}"
    return f"{n:,}"  # unreachable; keeps mypy sure of the return


def _num(x: float) -> str:
    """Three significant digits for small values, thousands separators for large ones."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cells(layer: Layer) -> tuple[str, ...]:
    """What a row shows besides its index and name; equal cells let rows collapse."""
    patterns = ", ".join(p.describe(layer.name) for p in layer.tp_patterns)
    return (_count(layer.params), _num((layer.fwd_flops + layer.bwd_flops) / 1e9),
            _num(layer.activation_bytes / 1e6), _num(layer.boundary_bytes / 1e6), patterns)


def _same(a: Layer, b: Layer) -> bool:
    """Raw figures equal (not just their rounding), so a collapsed row hides nothing."""
    return (a.repeat_of is not None and a.repeat_of == b.repeat_of and a.params == b.params
            and a.fwd_flops == b.fwd_flops and a.bwd_flops == b.bwd_flops
            and a.activation_bytes == b.activation_bytes
            and a.boundary_bytes == b.boundary_bytes
            and [p.describe(a.name) for p in a.tp_patterns]
            == [p.describe(b.name) for p in b.tp_patterns])


def layer_rows(layers: Sequence[Layer]) -> list[list[str]]:
    """One row per layer; runs of identical copies of one traced layer share one row."""
    rows: list[list[str]] = []
    i = 0
    while i < len(layers):
        first = layers[i]
        j = i + 1
        while j < len(layers) and _same(first, layers[j]):
            j += 1
        if j - i >= _COLLAPSE_MIN:
            last = layers[j - 1]
            name = f"{first.name} ... {last.name} (x{j - i})"
            rows.append([f"{first.index}-{last.index}", name, *_cells(first)])
        else:
            rows.extend([str(layer.index), layer.name, *_cells(layer)] for layer in layers[i:j])
        i = j
    return rows


def inspect_report(graph: ModelGraph, name: str = "") -> str:
    """The text ``autopar inspect`` prints: a header, the layer table and the totals."""
    shapes = ", ".join(str(list(s)) for s in graph.input_shapes) or "none"
    title = f"{graph.model_name} ({name})" if name and name != graph.model_name else (
        graph.model_name)
    header = (f"{title}: batch {graph.batch_size}, inputs {shapes}; "
              f"costs per sample, one training step (forward + backward)")
    total_flops = (graph.fwd_flops + graph.bwd_flops) / 1e9
    table = render(
        ["#", "layer", "params", "GFLOP fwd+bwd", "act MB", "boundary MB", "TP patterns"],
        layer_rows(graph.layers), align="rlrrrrl",
        footer=[["", "total", _count(graph.total_params), _num(total_flops),
                 _num(graph.activation_bytes / 1e6), "", ""]])
    short = f" ({_count(graph.total_params)})" if graph.total_params >= 10_000 else ""
    totals = [
        ("params", f"{graph.total_params:,}{short}; trainable {graph.trainable_params:,}; "
                   f"active {graph.active_params:,}"),
        ("GFLOP/sample", f"{_num(total_flops)} (forward {_num(graph.fwd_flops / 1e9)}, "
                         f"backward {_num(graph.bwd_flops / 1e9)})"),
        ("activations", f"{_num(graph.activation_bytes / 1e6)} MB/sample saved for backward"),
        ("ops", f"{graph.graph.number_of_nodes():,} in {len(graph.layers)} "
                f"layer{'s' if len(graph.layers) != 1 else ''}"),
        ("capture", graph.capture),
    ]
    width = max(len(k) for k, _ in totals)
    lines = ["totals:", *(f"  {k.ljust(width)}  {v}" for k, v in totals)]
    return "\n".join([header, "", table, "", *lines])


if __name__ == "__main__":
    raise SystemExit(main())
