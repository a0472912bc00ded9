"""The executor's errors: a plan that does not fit the model, the job or the checkpoint."""

from __future__ import annotations

from autopar.errors import AutoparError


class ExecutorError(AutoparError):
    """The plan cannot be applied here: the model, the world size or a checkpoint differ."""


class PlanMismatchError(ExecutorError):
    """The model or the job is not the one the plan was made for; the message says what differs."""


class CheckpointError(ExecutorError):
    """A checkpoint that does not exist or does not fit the model."""
