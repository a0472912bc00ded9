"""Quantities with units in profile files: ``"80 GiB"``, ``"200 Gb/s"``, ``"989.4 TFLOP/s"``.

Every numeric field of a profile also accepts a plain number in base units (bytes, bytes per
second, FLOP/s, seconds). Strings with units exist so that a file reads like its datasheet and
so that bits and bytes cannot be confused: ``"400 Gb/s"`` is 50e9 bytes/s, ``"400 GB/s"`` is
400e9. Decimal prefixes (k, M, G, T, P) are powers of 1000, binary ones (Ki, Mi, Gi, Ti, Pi)
powers of 1024.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["parse_bytes", "parse_flops", "parse_rate", "parse_seconds"]

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")

# Scales are Decimals so that "66.9 TFLOP/s" becomes exactly float("66.9e12").
_DECIMAL = {
    "": Decimal(1),
    "k": Decimal("1e3"),
    "K": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
}
_BINARY = {f"{p}i": Decimal(2) ** (10 * (i + 1)) for i, p in enumerate("KMGTP")}


def _byte_units() -> dict[str, Decimal]:
    units = {f"{prefix}B": scale for prefix, scale in {**_DECIMAL, **_BINARY}.items()}
    units.update({"bytes": Decimal(1), "byte": Decimal(1)})
    return units


def _rate_units() -> dict[str, Decimal]:
    units: dict[str, Decimal] = {}
    for unit, scale in _byte_units().items():
        units[f"{unit}/s"] = scale
        units[f"{unit}ps"] = scale
    for prefix, scale in _DECIMAL.items():
        for suffix in ("b/s", "bit/s", "bps", "bits/s"):
            units[f"{prefix}{suffix}"] = scale / 8
    return units


def _flops_units() -> dict[str, Decimal]:
    units: dict[str, Decimal] = {}
    for prefix, scale in _DECIMAL.items():
        for suffix in ("flop/s", "flops", "flop/sec"):
            units[f"{prefix.lower()}{suffix}"] = scale
    return units


_BYTES = _byte_units()
_RATES = _rate_units()
_FLOPS = _flops_units()
_SECONDS = {
    "s": Decimal(1),
    "sec": Decimal(1),
    "ms": Decimal("1e-3"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ns": Decimal("1e-9"),
}


def _split(value: object, what: str, example: str) -> tuple[Decimal, str]:
    """Return ``(number, unit)`` of a number or a ``"<number> <unit>"`` string."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected {what}, got a boolean; write a number or a string like {example}"
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number for {what}, got {value!r}")
        number, unit = Decimal(value) if isinstance(value, int) else Decimal(repr(value)), ""
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        if match is None:
            raise ValueError(
                f"cannot read {value!r} as {what}; write a number or a string like {example}"
            )
        number, unit = Decimal(match.group(1)), match.group(2)
    else:
        raise ValueError(
            f"expected {what}, got {type(value).__name__}; "
            f"write a number or a string like {example}"
        )
    return number, unit


def _unknown_unit(unit: str, value: object, what: str, known: str) -> ValueError:
    return ValueError(f"unknown unit {unit!r} in {value!r} for {what}; use {known}")


def parse_bytes(value: object) -> int:
    """A size in bytes: ``85899345920``, ``"80 GiB"``, ``"24 GB"``."""
    number, unit = _split(value, "a size in bytes", '"80 GiB"')
    if unit and unit not in _BYTES:
        if unit.endswith("b") or unit.endswith("bit") or unit.endswith("bits"):
            raise ValueError(
                f"{value!r} is in bits; memory sizes are in bytes: write B, GB (1e9) or GiB (2**30)"
            )
        raise _unknown_unit(
            unit, value, "a size in bytes", "B, kB, MB, GB, TB or KiB, MiB, GiB, TiB"
        )
    return int((number * _BYTES.get(unit, Decimal(1))).to_integral_value())


def parse_rate(value: object) -> float:
    """Bytes per second: ``3.35e12``, ``"3.35 TB/s"``, ``"200 Gb/s"`` (bits, = 25e9 bytes/s)."""
    number, unit = _split(value, "a bandwidth in bytes/s", '"3.35 TB/s" or "200 Gb/s"')
    if unit and unit not in _RATES:
        raise _unknown_unit(
            unit,
            value,
            "a bandwidth",
            "bytes (B/s, GB/s, TB/s, GiB/s) or bits (Gb/s, Gbit/s, Gbps)",
        )
    return float(number * _RATES.get(unit, Decimal(1)))


def parse_flops(value: object) -> float:
    """FLOP/s: ``989.4e12``, ``"989.4 TFLOP/s"``, ``"1.98 PFLOPS"``."""
    number, unit = _split(value, "a rate in FLOP/s", '"989.4 TFLOP/s"')
    key = unit.lower()
    if unit and key not in _FLOPS:
        raise _unknown_unit(
            unit, value, "a FLOP rate", "FLOP/s with a prefix: GFLOP/s, TFLOP/s, PFLOP/s"
        )
    return float(number * _FLOPS.get(key, Decimal(1)))


def parse_seconds(value: object) -> float:
    """A duration in seconds: ``5e-6``, ``"5 us"``, ``"2.7 µs"``, ``"1 ms"``."""
    number, unit = _split(value, "a duration in seconds", '"5 us"')
    if unit and unit not in _SECONDS:
        raise _unknown_unit(unit, value, "a duration", "s, ms, us (or µs), ns")
    return float(number * _SECONDS.get(unit, Decimal(1)))
