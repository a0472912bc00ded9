"""``autopar validate``: measure what a plan predicted, layer by layer, on one real device.

``validate(model, plan)`` runs each stage's layers as one rank of the plan would (its
tensor-parallel shard, its micro-batch, the plan's precision; ``local_layers.py``), forward and
backward, with no recomputation, with full recomputation and in the plan's own mode; then each
stage's layers chained, holding as many micro-batches as the schedule holds at the stage's
peak (``runs.py``). It reports predicted against measured time and memory with the errors
(``report.py``). Identical layers (same cost profile and input) run once. Several devices run
the real plan instead: ``autopar.validation.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map_only

from autopar.cluster import DeviceProfile, NodeGroup
from autopar.cost_models.pipeline import peak_in_flight
from autopar.estimate import repeated_blocks
from autopar.executor.layout import example_inputs, layout_of, meta_copy
from autopar.layer_profiles import layer_outputs, layer_profiles
from autopar.plan import Plan
from autopar.profiling.measure import resolve_device
from autopar.tracing import trace
from autopar.validation import runs
from autopar.validation.local_layers import (
    COMPUTE_DTYPES,
    Call,
    ValidationError,
    capture_calls,
    layer_module_name,
    local_layer,
    materialise,
    with_rows,
)
from autopar.validation.predict import Predicted, predict
from autopar.validation.report import LayerRow, StageRow, ValidationReport, updated_profile

__all__ = ["Validation", "ValidationError", "ValidationReport", "updated_profile",
           "validate"]

MODES = ("none", "full")
"""Recomputation modes every layer is measured in, besides the plan's own."""


@dataclass
class _Run:
    """One layer run: which layer, in which mode, on which stage; and what was measured."""

    stage: int
    index: int
    mode: str
    measured_as: str
    result: runs.Measured


class Validation:
    """Measurements of a plan's layers on one device, to compare with any device profile.

    Measuring is the slow part; ``report(profile)`` predicts and compares in milliseconds, so
    ``--update-profile`` can show the errors before and after the refit from one set of runs.
    """

    def __init__(self, model: nn.Module, plan: Plan, *, device: str = "cpu",
                 inputs: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None,
                 repeats: int = 5, stages: bool = True, kernels: str = "eager",
                 progress: Callable[[str], None] = lambda _: None) -> None:
        config = plan.config
        if config.cp > 1:
            raise ValidationError(f"plans with context parallelism (cp={config.cp}) cannot be "
                                  "validated layer by layer: a rank's attention needs the other "
                                  "ranks' keys and values; run the whole plan with --run "
                                  "(autopar.validation.distributed), or validate a plan made "
                                  "with constraints={'cp': 1}")
        if repeats < 1:
            raise ValidationError(f"repeats must be at least 1, got {repeats}")
        if kernels not in ("eager", "fused"):
            raise ValidationError(f"kernels must be 'eager' or 'fused', got {kernels!r}")
        dtype = COMPUTE_DTYPES.get(plan.precision)
        if dtype is None:
            raise ValidationError(f"precision {plan.precision!r} cannot be run here; "
                                  f"validate a plan in one of {', '.join(COMPUTE_DTYPES)}")
        self.plan, self.kernels, self.dtype = plan, kernels, dtype
        self.device = resolve_device(device)
        if inputs is None:
            inputs = example_inputs(meta_copy(model), plan)
        batched = [t for t in tree_leaves((inputs, kwargs or {}))
                   if isinstance(t, torch.Tensor) and t.dim() > 0]
        if not batched:  # (inputs may all be keywords: HF models take input_ids=)
            raise ValidationError("the example inputs hold no tensor with a batch dimension; "
                                  "pass inputs= or kwargs= with one, batch first")
        rows = batched[0].shape[0]
        inputs, kwargs = tree_map_only(
            torch.Tensor, lambda t: _micro_batch(t, rows, config.micro_batch_size),
            (inputs, kwargs or {}))
        meta_inputs = tree_map_only(torch.Tensor, lambda t: t.to("meta"), (inputs, kwargs))
        graph = trace(meta_copy(model), *meta_inputs)
        graph.kernels = kernels
        self.layers = layout_of(model, plan, graph=graph).layers
        self.profiles = layer_profiles(graph)
        self.outputs = layer_outputs(graph)
        self.seq = graph.seq_len
        progress("recording each layer's inputs")
        calls = capture_calls(model, self.layers, inputs, kwargs, self.device, dtype)
        chunks = config.stage_layers(repeated_blocks(graph))
        self.stage_layers = {s.stage: [i for c, chunk in enumerate(chunks)
                                       if c % config.pp == s.stage for i in chunk]
                             for s in plan.stages}
        self.runs: list[_Run] = []
        self.stage_peaks: dict[int, tuple[int, int]] = {}  # stage -> (held, measured bytes)
        done: dict[tuple[object, ...], tuple[str, runs.Measured]] = {}
        for stage, indices in self.stage_layers.items():
            for i in indices:
                layer = self.layers[i]
                for mode in dict.fromkeys((*MODES, config.recompute_of(i))):
                    key = (self.profiles[i], self.profiles[i - 1].boundary_bytes if i else None,
                           mode)
                    if key not in done:
                        progress(f"stage {stage}: {layer.name} ({mode})")
                        module, call = self._module_and_call(model, layer, calls, mode)
                        done[key] = (layer.name, runs.measure([module], [call], self.device,
                                                              repeats))
                    name, result = done[key]
                    self.runs.append(_Run(stage, i, mode, name, result))
            if stages and indices:
                progress(f"stage {stage}: its layers chained")
                self.stage_peaks[stage] = self._stage_peak(model, stage, indices, calls)

    def _module_and_call(self, model: nn.Module, layer: Any, calls: dict[str, Call], mode: str
                         ) -> tuple[nn.Module, Call]:
        name = layer_module_name(layer, model)
        if name is None or name not in calls:
            raise ValidationError(f"layer {layer.name!r} is not one module called in the "
                                  "forward pass, so it cannot be run on its own")
        module = local_layer(model, name, self.plan, self.device, self.dtype)
        return (runs.with_recompute(module, layer, self.plan.config, mode),
                materialise(calls[name], self.dtype))

    def _stage_peak(self, model: nn.Module, stage: int, indices: list[int],
                    calls: dict[str, Call]) -> tuple[int, int]:
        """(micro-batches held per chunk, measured peak bytes) of the stage's layers chained
        in their planned modes, holding what its schedule holds at the peak (as ``estimate``
        counts it: in flight / virtual stages)."""
        c = self.plan.config
        held = peak_in_flight(c.schedule, c.pp, self.plan.micro_batching.micro_batches,
                              c.virtual_stages)[stage]
        per_chunk = max(1, math.ceil(held / c.virtual_stages))
        parts = [self._module_and_call(model, self.layers[i], calls, c.recompute_of(i))
                 for i in indices]
        return per_chunk, runs.in_flight_peak([m for m, _ in parts], [call for _, call in parts],
                                              self.device, per_chunk)

    def report(self, profile: DeviceProfile | None = None) -> ValidationReport:
        """Predictions with ``profile`` (default: the plan's devices) against the runs."""
        plan, config = self.plan, self.plan.config
        # The layers ran on whole sequences here: predict them the same way.
        predicted_config = config.model_copy(update={"sequence_parallel": False})
        notes = [f"predictions cost the layers as {self.kernels} kernels" + (
            " (one per op, as this run executes them)" if self.kernels == "eager" else
            " (as the planner did; this run executes them eagerly)")]
        if config.sequence_parallel:
            notes.append("the plan uses sequence parallelism; here norms and dropout run on "
                         "the whole sequence, and the predictions assume the same")
        groups = {s.stage: _group(plan, s.node_group, profile) for s in plan.stages}
        rows: list[LayerRow] = []
        planned: dict[int, Predicted] = {}
        for run in self.runs:
            guess = predict(self.profiles, self.outputs, run.index, predicted_config,
                            groups[run.stage],
                            plan.precision, self.seq, run.mode, self.dtype.itemsize)
            is_planned = run.mode == config.recompute_of(run.index)
            if is_planned:
                planned[run.index] = guess
            rows.append(_row(run, self.layers[run.index].name, is_planned, guess))
        stage_rows = [_stage_row(stage, self.stage_layers[stage], held, peak, rows, planned)
                      for stage, (held, peak) in self.stage_peaks.items()]
        name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                else "cpu")
        return ValidationReport(
            device=f"{self.device} ({name}, {torch.get_num_threads()} threads)",
            profile=(profile or plan.cluster.groups[0].device).name, precision=plan.precision,
            notes=notes, layers=rows, stages=stage_rows)


def validate(model: nn.Module, plan: Plan, *, device: str = "cpu",
             profile: DeviceProfile | None = None, inputs: tuple[Any, ...] | None = None,
             kwargs: dict[str, Any] | None = None, repeats: int = 5, stages: bool = True,
             kernels: str = "eager",
             progress: Callable[[str], None] = lambda _: None) -> ValidationReport:
    """Measure ``plan``'s layers on ``device`` and compare with the predictions.

    ``model`` may be on the meta device: one layer is materialised at a time. ``profile``
    replaces the plan's device profile for the predictions (e.g. one ``autopar profile``
    wrote); ``inputs``/``kwargs`` are one micro-batch of model inputs (default: zeros of the
    plan's input shapes, as token ids when the model starts with an embedding).
    ``kernels`` is how the predictions cost the layers: ``"eager"`` (default) one kernel per op,
    as this run executes them; ``"fused"`` as the planner did, assuming fused kernels (what
    ``torch.compile`` or Megatron-style kernels would run).
    """
    return Validation(model, plan, device=device, inputs=inputs, kwargs=kwargs,
                      repeats=repeats, stages=stages, kernels=kernels,
                      progress=progress).report(profile)


def _micro_batch(t: torch.Tensor, rows: int, size: int) -> torch.Tensor:
    """An input of ``size`` rows from one of ``rows`` (the batch dimension is dim 0)."""
    if t.dim() == 0 or t.shape[0] != rows or rows == size:
        return t
    return with_rows(t, size)


def _group(plan: Plan, name: str, profile: DeviceProfile | None) -> NodeGroup:
    group = next(g for g in plan.cluster.groups if g.name == name)
    return group if profile is None else group.model_copy(update={"device": profile})


def _row(run: _Run, layer: str, planned: bool, guess: Predicted) -> LayerRow:
    result = run.result
    return LayerRow(stage=run.stage, index=run.index, layer=layer, mode=run.mode,
                    planned=planned, measured_as=run.measured_as,
                    predicted_forward_s=guess.forward_s, measured_forward_s=result.forward_s,
                    predicted_backward_s=guess.backward_s,
                    measured_backward_s=result.backward_s,
                    predicted_saved_bytes=guess.saved_bytes,
                    measured_saved_bytes=result.saved_bytes,
                    predicted_peak_bytes=guess.peak_bytes, measured_peak_bytes=result.peak_bytes,
                    predicted_arithmetic_s=guess.arithmetic_s,
                    predicted_memory_s=guess.memory_s)


def _stage_row(stage: int, indices: list[int], held: int, peak: int, rows: list[LayerRow],
               guesses: dict[int, Predicted]) -> StageRow:
    """The stage's layers in their planned modes: time is the sum of the layer rows; memory
    the chained run's peak against activations held, the recomputed layer's working set,
    weight gradients, the outputs held and the input's gradient."""
    mine = [r for r in rows if r.stage == stage and r.planned]
    predicted_peak = (sum(guesses[i].saved_bytes for i in indices) * held
                      + max(guesses[i].working_bytes for i in indices)
                      + sum(guesses[i].gradient_bytes for i in indices)
                      + guesses[indices[-1]].output_bytes * held
                      + guesses[indices[0]].input_grad_bytes)
    return StageRow(stage=stage, layers=len(indices), micro_batches_held=held,
                    predicted_time_s=sum(r.predicted_forward_s + r.predicted_backward_s
                                         for r in mine),
                    measured_time_s=sum(r.measured_forward_s + r.measured_backward_s
                                        for r in mine),
                    predicted_peak_bytes=predicted_peak, measured_peak_bytes=peak)
