"""The library's exceptions: one base class, each error naming what was wrong and the fix."""

from __future__ import annotations


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
