"""``autopar profile``: measure the local device and write a profile the cost models read.

``profile_device`` runs the micro-benchmarks (``benchmarks.py``), fits them (``fit.py``) and
returns a validated ``DeviceProfile`` (and a ``LinkProfile`` when collectives were measured
across several local ranks); ``write_profile`` saves them as TOML, atomically.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import autopar
from autopar.cluster import DeviceProfile, LinkProfile, ProfileError
from autopar.files import write_atomically
from autopar.profiling import benchmarks, fit
from autopar.profiling.measure import MeasureError, resolve_device
from autopar.profiling.toml_text import to_toml

__all__ = ["MeasuredProfile", "known_gpu", "profile_device", "write_profile"]


@dataclass(frozen=True)
class MeasuredProfile:
    """What ``autopar profile`` measured: the device, the link between local ranks (or None),
    and the raw samples behind them."""

    device: DeviceProfile
    link: LinkProfile | None
    samples: list[benchmarks.Sample]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({model or platform.processor() or platform.machine()}, "\
           f"{torch.get_num_threads()} threads)"


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _matching_base(device: torch.device, base: str | None) -> DeviceProfile | None:
    """The bundled (or user) profile whose datasheet figures this device has: ``--base``, or
    for a GPU the bundled profile its name and memory match (``known_gpu``)."""
    if base is not None:
        return DeviceProfile.from_profile(base)
    if device.type != "cuda":
        return None
    return known_gpu(torch.cuda.get_device_name(device),
                     int(torch.cuda.get_device_properties(device).total_memory))


def known_gpu(gpu_name: str, memory_bytes: int) -> DeviceProfile | None:
    """The bundled profile of a GPU, from the name CUDA reports and its memory, or None.

    The profile's family (``H100`` of ``H100-SXM5-80GB``) must be a whole word of the name, so
    that ``NVIDIA L40S`` is no ``L4`` and ``NVIDIA GH200`` no ``H200``; among a family's
    profiles the one whose memory is nearest wins (``A100-SXM4-80GB`` for an 80 GB A100, not
    the first listed). PCIe and NVL boards have other clocks, power and bandwidth than the SXM
    datasheets bundled, so they match none of those: pass ``--base`` for them.
    """
    from autopar.hardware_profiles import known_profiles

    words = set(re.split(r"[^A-Z0-9]+", gpu_name.upper()))
    not_sxm = bool(words & {"PCIE", "NVL"})
    candidates = []
    for known in known_profiles()["devices"]:
        family, *variant = known.upper().split("-")
        if family == "CPU" or family not in words:
            continue
        if not_sxm and any(part.startswith("SXM") for part in variant):
            continue
        candidates.append(DeviceProfile.from_profile(known))
    if not candidates:
        return None
    return min(candidates, key=lambda p: abs(math.log(p.memory_bytes / max(memory_bytes, 1))))


def profile_device(device_name: str = "cpu", *, processes: int | None = None,
                   budget_s: float | None = None,
                   base: str | None = None, name: str | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> MeasuredProfile:
    """Measure this machine's ``device_name`` (``cpu``, ``cuda``, ``cuda:N``).

    ``budget_s`` bounds the micro-benchmarks (default 40 s on a CPU, 180 s on a GPU);
    ``processes`` > 1 also measures all-reduce across that many local ranks (gloo processes on
    a CPU; on GPUs, one per device, at most the devices present; default: every local GPU, or
    1 on a CPU); ``base`` names the profile
    whose datasheet peaks and bandwidth to keep (found by name for known GPUs).
    """
    device = resolve_device(device_name)
    if processes is None:  # every local GPU; a CPU is one device unless asked otherwise
        processes = torch.cuda.device_count() if device.type == "cuda" else 1
    if processes < 1:
        raise MeasureError(f"processes must be at least 1, got {processes}")
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise MeasureError(f"processes={processes} but this machine has "
                           f"{torch.cuda.device_count()} CUDA devices; pass at most that many")
    total = budget_s if budget_s is not None else (180.0 if device.type == "cuda" else 40.0)
    if not total > 0:
        raise MeasureError(f"budget must be positive seconds, got {budget_s}")
    budget = benchmarks.Budget(total_s=total, per_call_s=max(0.05, total / 60))
    base_profile = _matching_base(device, base)
    today = datetime.date.today().isoformat()
    provenance = (f"autopar {autopar.__version__} `autopar profile` on {platform.node()}, "
                  f"torch {torch.__version__}, {today}")
    samples = (benchmarks.matmuls(device, budget, progress)
               + benchmarks.attention(device, budget, progress)
               + benchmarks.memory(device, budget, progress))
    label = name or (f"{base_profile.name}-measured" if base_profile else _device_name(device))
    fields = fit.device_fields(samples, name=label, memory_bytes=_memory_bytes(device),
                               base=base_profile, provenance=provenance)
    try:
        profile = DeviceProfile.model_validate(fields)
    except ValueError as error:  # a fit the profile model refuses is a bug here, not bad input
        raise ProfileError(f"the measured profile is invalid: {error}") from error
    link = None
    if processes > 1:
        reduce = benchmarks.all_reduce(device, processes, progress)
        samples += reduce
        link = LinkProfile.model_validate(fit.link_fields(reduce, name=f"{label}-local",
                                                          provenance=provenance))
    return MeasuredProfile(profile, link, samples)


def write_profile(measured: MeasuredProfile, path: str | os.PathLike[str]) -> list[Path]:
    """Write the device profile to ``path`` (TOML) and, when a link was measured, the link to
    ``<stem>.link.toml`` and a one-node cluster joining them to ``<stem>.cluster.toml``."""
    out = Path(path)
    header = ("Measured by `autopar profile`; load with DeviceProfile.from_profile(path) or "
              "name it in a cluster file.\nSee docs/hardware_profiles.md for the fields.")
    device_fields = measured.device.model_dump(exclude_defaults=True)
    write_atomically(out, to_toml(device_fields, header))
    written = [out]
    if measured.link is not None:
        link_path = out.with_name(f"{out.stem}.link.toml")
        write_atomically(link_path, to_toml(measured.link.model_dump(exclude_defaults=True)))
        ranks = measured.samples[-1].shape[1]
        cluster = {"name": measured.device.name,
                   "source": "autopar profile: this machine as a one-node cluster",
                   "groups": None}
        text = to_toml(cluster) + "\n".join([
            "", "[[groups]]", f"device = {json.dumps(out.name)}", "nodes = 1",
            f"devices_per_node = {ranks}", f"intra_node = {json.dumps(link_path.name)}",
            'inter_node = "ethernet-25"', "nics_per_node = 1", ""])
        cluster_path = out.with_name(f"{out.stem}.cluster.toml")
        write_atomically(cluster_path, text)
        written += [link_path, cluster_path]
    return written
