"""``autopar.trace``: capture a model's training step as a costed ``ModelGraph``.

Order of attempts, cheapest and most faithful first:

1. ``torch.export`` of the model with long runs of identical blocks cut to two (blocks.py);
2. if export fails, the module-hooks capture of the same shortened model, with one warning
   naming the module where export failed;
3. if the two traced blocks of a run turn out to differ, or the shortened model cannot run at
   all, both again at full depth;
4. if nothing works, ``TraceError`` (or ``InputError`` when the model simply rejects the
   example inputs) naming the module and op.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from autopar.errors import AutoparError, InputError, TraceError
from autopar.tracing.assemble import (
    RepeatMismatch,
    assign_units,
    build_graph,
    canonical_param_names,
    expand_runs,
    rename_records,
)
from autopar.tracing.blocks import Run, analyse, module_signature, shortened
from autopar.tracing.export_capture import capture_with_export
from autopar.tracing.graph import ModelGraph
from autopar.tracing.hooks_capture import capture_with_hooks, module_stack
from autopar.tracing.records import OpRecord


class TraceFallbackWarning(UserWarning):
    """``torch.export`` could not capture the model; the module-hooks path was used instead."""


_DATA_DEPENDENT = ("data-dependent", "DataDependent", "DynamicOutputShape", "GuardOnDataDependent",
                   "unbacked", "item()", "nonzero")


def _is_data_dependent(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _DATA_DEPENDENT)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0].rstrip(". ") if lines else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters())
    return first.device


def _to_device(x: Any, device: torch.device) -> Any:
    """Inputs follow the parameters' device; to meta this allocates nothing."""
    if isinstance(x, torch.Tensor) and x.device != device:
        return x.to("meta") if device.type == "meta" else torch.zeros(
            x.shape, dtype=x.dtype, device=device)
    return x


@contextmanager
def _training_step(model: nn.Module) -> Iterator[None]:
    """Trace what a training step runs: train mode, and no inference KV cache (HF models)."""
    was_training = model.training
    config = getattr(model, "config", None)
    had_cache = getattr(config, "use_cache", None)
    model.train()
    if had_cache:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        model.train(was_training)
        if had_cache:
            config.use_cache = had_cache  # type: ignore[union-attr]


@contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """A failed attempt is expected and handled; keep torch's internal error dumps off stderr."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _Failure:
    """Where a capture attempt failed: the innermost running module and the last op."""

    def __init__(self, exc: BaseException, module: str, op: str) -> None:
        self.exc = exc
        self.module = module
        self.op = op


def _attempt(capture: Callable[..., list[OpRecord]], model: nn.Module, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> list[OpRecord] | _Failure:
    """Run one capture, remembering which module and op were running if it fails."""
    with module_stack(model) as stack, _quiet_torch_logs():
        try:
            return capture(model, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next path
            module = stack[-1][0] if stack else ""
            op = getattr(exc, "autopar_op", "") or _last_aten_op(exc)
            return _Failure(exc, module, op)


def _last_aten_op(exc: BaseException) -> str:
    """The ATen op named in an exception message, if any (e.g. ``aten.nonzero.default``)."""
    for word in str(exc).replace("(", " ").replace(")", " ").split():
        if word.startswith(("aten.", "aten::")):
            return word.rstrip(".,:;'\"")
    return ""


def _capture(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
             runs: list[Run]) -> tuple[list[OpRecord], str, Any] | _Failure:
    """Export, else module hooks, on the model shortened by ``runs``."""
    with shortened(model, runs) as renaming:
        result = _attempt(capture_with_export, model, args, kwargs)
        if not isinstance(result, _Failure):
            return result, "export", renaming
        export_failure = result
        result = _attempt(capture_with_hooks, model, args, kwargs)
        if isinstance(result, _Failure):
            return result
        where = export_failure.module or type(model).__name__
        warnings.warn(
            f"torch.export could not capture module '{where}' "
            f"({_first_line(export_failure.exc)}); traced it with module hooks instead",
            TraceFallbackWarning, stacklevel=4)
        return result, "module-hooks", renaming


def _fail(model: nn.Module, failure: _Failure) -> AutoparError:
    exc = failure.exc
    where = failure.module or "(top level)"
    module_type = type(model.get_submodule(failure.module)).__name__ if failure.module else type(
        model).__name__
    if _is_data_dependent(exc):
        return TraceError(
            f"cannot trace module '{where}' ({module_type}): it branches on tensor values "
            f"({_first_line(exc)}) at op {failure.op or 'unknown'}; neither torch.export nor "
            f"module hooks can capture data-dependent control flow. Rewrite that branch with "
            f"torch.where/torch.cond, or trace a model without it.",
            module=failure.module, op=failure.op)
    return InputError(
        f"the model rejected the example inputs in module '{where}' ({module_type}): "
        f"{_first_line(exc)}. Check that example_inputs/example_kwargs have the shapes and "
        f"dtypes the model's forward expects.")


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    tensors = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0:
        return 1
    return int(tensors[0].shape[0])


def _signature(model: nn.Module, shapes: Sequence[tuple[int, ...]]) -> str:
    """Fingerprint of the model's structure and input shapes (same model, same signature)."""
    text = module_signature(model) + repr(list(shapes))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def trace(model: nn.Module, example_inputs: Any, example_kwargs: dict[str, Any] | None = None
          ) -> ModelGraph:
    """Capture one training step of ``model`` on ``example_inputs`` as a costed ``ModelGraph``.

    The model may live on the ``meta`` device (the normal case for planning) or on the CPU;
    nothing is materialised: every tensor of the step is a fake tensor. ``example_inputs`` is
    one tensor, a tuple of positional inputs, or a dict of keyword inputs (an encoder-decoder's
    ``input_ids`` and ``decoder_input_ids``; ``example_kwargs`` then stays empty); the first
    dimension of its tensors is the batch the costs are measured at (per-sample figures divide
    by it).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise InputError(
            f"model {type(model).__name__} has no parameters: there is nothing to parallelise; "
            f"pass the module that owns the weights")
    if isinstance(example_inputs, dict):
        if example_kwargs:
            raise InputError(
                "example_inputs is a dict of keyword inputs and example_kwargs is given too: "
                "pass the keyword inputs in one of them")
        example_inputs, example_kwargs = (), example_inputs
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)
    kwargs = dict(example_kwargs or {})
    device = _model_device(model)
    args = tree_map(lambda x: _to_device(x, device), args)
    kwargs = tree_map(lambda x: _to_device(x, device), kwargs)
    shapes = [tuple(x.shape) for x in tree_flatten((args, kwargs))[0]
              if isinstance(x, torch.Tensor)]

    structure = analyse(model)
    attempts = [structure.runs, []] if structure.runs else [[]]
    failure: _Failure | None = None
    with _training_step(model):
        for runs in attempts:
            result = _capture(model, args, kwargs, runs)
            if isinstance(result, _Failure):
                failure = failure or result
                continue
            records, capture, renaming = result
            rename_records(records, renaming, canonical_param_names(model))
            units = assign_units(records, structure)
            try:
                records, units, copied = expand_runs(records, units, runs)
            except RepeatMismatch:
                continue
            return build_graph(model, records, units, structure, copied,
                               batch_size=_batch_size(args, kwargs), input_shapes=shapes,
                               capture=capture, signature=_signature(model, shapes))
    assert failure is not None
    raise _fail(model, failure)
