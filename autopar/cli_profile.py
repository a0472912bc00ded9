"""``autopar profile``: micro-benchmark the local device into a profile TOML."""

from __future__ import annotations

import argparse
import time
from typing import Any

from autopar.cli_common import positive_float, progress
from autopar.files import check_writable


def add_parser(commands: Any, positive: Any) -> None:
    p = commands.add_parser(
        "profile", help="measure this machine's device and write a device profile",
        description="Run micro-benchmarks on the local device (matmuls over shapes and "
                    "dtypes, fused attention, elementwise and normalisation bandwidth, memory "
                    "bandwidth, kernel launch; all-reduce across --processes local ranks) and "
                    "fit them into a device profile the cost models read. Progress goes to "
                    "stderr. Use the profile with `autopar validate --profile` or name it in a "
                    "cluster file.")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu (default), cuda or cuda:N")
    p.add_argument("-o", "--output", required=True, metavar="DEVICE.toml",
                   help="where to write the profile (with --processes > 1 also "
                        "DEVICE.link.toml and DEVICE.cluster.toml beside it)")
    p.add_argument("--processes", type=positive, default=None, metavar="N",
                   help="also measure all-reduce across N local ranks (gloo processes on a "
                        "CPU, one per GPU; default: every local GPU, 1 on a CPU)")
    p.add_argument("--budget", type=positive_float, default=None, metavar="S",
                   help="seconds for the micro-benchmarks (default 40 on a CPU, 180 on a GPU)")
    p.add_argument("--base", default=None, metavar="DEVICE",
                   help="a known device whose datasheet peaks and bandwidth to keep (found by "
                        "name for known GPUs)")
    p.add_argument("--name", default=None, help="the profile's name")
    p.add_argument("--threads", type=positive, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's own)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=_profile)


def _profile(args: argparse.Namespace) -> int:
    import torch

    from autopar.profiling import profile_device, write_profile

    check_writable(args.output)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    say = progress(args.quiet, clock=True)

    measured = profile_device(args.device, processes=args.processes, budget_s=args.budget,
                              base=args.base, name=args.name, progress=say)
    written = write_profile(measured, args.output)
    d = measured.device
    peaks = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in d.peak_flops.items())
    print(f"{d.name}: {peaks}; memory {d.memory_bandwidth / 1e9:.3g} GB/s x "
          f"{d.memory_efficiency:.2f}; launch {d.kernel_launch_overhead_s * 1e6:.1f} us")
    if measured.link is not None:
        link = measured.link
        print(f"{link.name}: all-reduce bus bandwidth {link.bandwidth / 1e9:.3g} GB/s, "
              f"latency {link.latency_s * 1e6:.1f} us per hop")
    print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - started:.0f} s")
    return 0
