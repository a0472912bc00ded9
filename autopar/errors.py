"""The library's exceptions: one base class, each error naming what was wrong and the fix."""

from __future__ import annotations

from typing import Any


def field_problems(exc: Any, default: str) -> str:
    """A pydantic ValidationError as one line: each offending field, its value and what is
    wrong (``default`` names the object when an error has no field)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or default}={e.get('input')!r}: "
                     f"{e['msg']}" for e in exc.errors())


class AutoparError(Exception):
    """Base class of every error autopar raises on bad input or an impossible request.

    The CLI catches exactly this class, prints its message on one line and exits 2, so every
    message must make sense on its own: what was wrong, the offending value, and what to do.
    """


class SpecError(AutoparError):
    """A model SPEC (``file.py:factory``, ``pkg.module:factory`` or ``config.json``) is unusable."""


class InputError(AutoparError):
    """The model rejected the example inputs, or the model itself is unusable for planning."""


class TraceError(AutoparError):
    """Neither capture path (``torch.export`` nor module hooks) could trace the model.

    ``module`` is the module path that was running when capture failed and ``op`` the last
    ATen operator reached, so the user knows which part of their model to look at.
    """

    def __init__(self, message: str, *, module: str = "", op: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.op = op


class InfeasibleError(AutoparError):
    """No configuration of the model fits the cluster's memory under the constraints."""
