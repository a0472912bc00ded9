"""Predicted against measured on this machine's CPU: before profiling, after, and after refit.

Profiles the CPU (``autopar profile``), plans a small Llama for 4 CPU devices with tensor and
pipeline parallelism, then validates its layers (``autopar validate``) three times from one
set of runs: with the bundled ``cpu`` profile (an assumed 1 TFLOP/s test device: the
"spec-sheet" case), with the measured profile, and with that profile refitted by
``--update-profile``. Prints the planned rows' errors and the layer table of the last.

    python benchmarks/validation.py [--budget 40] [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from autopar.cli import main as autopar_main
from autopar.cluster import DeviceProfile
from autopar.plan import Plan
from autopar.profiling import profile_device
from autopar.spec import load_spec
from autopar.validation import Validation, ValidationReport, updated_profile

MODEL = str(Path(__file__).resolve().parent.parent / "examples" / "configs" / "tiny-llama.json")


def errors(report: ValidationReport) -> tuple[float, float, float, float]:
    """(time mean |error|, worst, peak memory mean |error|, worst) over the planned rows."""
    rows = report.planned_rows()
    times = [r.time_error for r in rows if r.time_error is not None]
    peaks = [r.peak_error for r in rows if r.peak_error is not None]
    return (statistics.fmean(map(abs, times)), max(times, key=abs),
            statistics.fmean(map(abs, peaks)), max(peaks, key=abs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    measured = profile_device("cpu", budget_s=args.budget).device
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / "plan.json"
        with contextlib.redirect_stdout(io.StringIO()):  # the plan's summary is not the point
            assert autopar_main(["plan", "--model", MODEL, "--seq-len", str(args.seq_len),
                                 "--cluster", "cpu", "--nodes", "1", "--global-batch", "8",
                                 "--precision", "fp32", "--cp", "1", "--tp", "2", "--pp", "2",
                                 "-q", "-o", str(plan_path)]) == 0
        plan = Plan.load(plan_path)
    loaded = load_spec(MODEL, seq_len=args.seq_len)
    validation = Validation(loaded.model, plan, inputs=loaded.example_inputs,
                            repeats=args.repeats)
    bundled = DeviceProfile.from_profile("cpu")
    reports = {"bundled cpu profile (assumed)": validation.report(bundled),
               "measured profile": validation.report(measured)}
    refit = updated_profile(reports["measured profile"], measured)
    reports["measured, refitted"] = validation.report(refit)
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; plan "
          f"{plan.config.tp=} {plan.config.pp=} mb={plan.config.micro_batch_size}, seq "
          f"{args.seq_len}, fp32")
    print("| profile | time error, mean abs | worst | peak memory error, mean abs | worst |")
    print("|---|---|---|---|---|")
    for name, report in reports.items():
        t, tw, m, mw = errors(report)
        print(f"| {name} | {t:.1%} | {tw:+.1%} | {m:.1%} | {mw:+.1%} |")
    print(f"\nrefit: sustained_fraction {refit.sustained_fraction}, memory_efficiency "
          f"{refit.memory_efficiency}\n")
    print(reports["measured, refitted"].table())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
