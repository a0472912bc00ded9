"""One rank's layers, on one real device, fed the inputs they would see in the plan.

``autopar validate`` times each traced layer as one rank of the plan would run it: its
tensor-parallel shard of the weights (from the plan's DTensor placements), its micro-batch,
the plan's precision. Nothing about the model has to be known:

- **Inputs.** The model's own ``forward`` runs once on the device with every layer replaced by
  a recorder that keeps the arguments it was called with and returns random values of the
  shape the real layer would produce (found on a meta copy). The model's glue code (masks,
  position ids, rotary tables) thus runs for real and each layer's inputs are what it would
  get, minus the values (which the timing does not depend on).
- **Weights.** Each layer is a meta copy of its module whose tensor-parallel parameters take
  their local shard shape (``Shard(d)`` on the plan's ``tp`` dimension divides dim ``d``), with
  attention modules' head counts made local, then materialised on the device with random
  values. No rank ever needs the whole model: one layer exists at a time.

Communication is not run: tensor-parallel all-reduces are costed by the link model, which
``autopar profile`` measures separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from autopar.errors import AutoparError
from autopar.executor.layout import meta_copy
from autopar.executor.split import first_tensor, set_submodule
from autopar.executor.tp import localise_heads
from autopar.plan import Plan
from autopar.tracing import Layer

COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The plan precisions (those the cost models know) and the dtype their layers compute in."""


class ValidationError(AutoparError):
    """A plan cannot be validated: no model given, a model that is not the plan's, cp > 1."""


@dataclass
class Call:
    """How a layer's module was called: its arguments, and which one is the activation."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    activation: int | str | None
    """Position or keyword of the incoming activation (None: the layer takes only ids)."""

    def with_activation(self, value: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments with ``value`` in place of the recorded activation."""
        if isinstance(self.activation, int):
            args = list(self.args)
            args[self.activation] = value
            return tuple(args), self.kwargs
        if isinstance(self.activation, str):
            return self.args, {**self.kwargs, self.activation: value}
        return self.args, self.kwargs

    def activation_value(self) -> torch.Tensor | None:
        if isinstance(self.activation, int):
            value = self.args[self.activation]
        elif isinstance(self.activation, str):
            value = self.kwargs[self.activation]
        else:
            return None
        assert isinstance(value, torch.Tensor)
        return value


class _Recorder(nn.Module):
    """Stands in for one layer's module in the capture run."""

    def __init__(self, meta_module: nn.Module, device: torch.device, dtype: torch.dtype,
                 calls: dict[str, Call], name: str) -> None:
        super().__init__()
        object.__setattr__(self, "_meta", meta_module)  # not registered: no parameters
        self.device, self.dtype, self.calls, self.name = device, dtype, calls, name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.name not in self.calls:
            position = _activation_position(args, kwargs)
            self.calls[self.name] = Call(args, kwargs, position)
        margs, mkwargs = tree_map_only(torch.Tensor, lambda t: t.detach().to("meta"),
                                       (args, kwargs))
        with torch.no_grad():
            out = self._meta(*margs, **mkwargs)  # type: ignore[operator]
        return tree_map_only(torch.Tensor, self._random, out)

    def _random(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn(t.shape, dtype=self.dtype, device=self.device)
        return torch.zeros(t.shape, dtype=t.dtype, device=self.device)


def _activation_position(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | str | None:
    """The first floating-point tensor argument: the activation a pipeline would pass in."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return i
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return k
    return None


def layer_module_name(layer: Layer, model: nn.Module) -> str | None:
    """The module that is the layer (its name), or None when the layer is not one module."""
    try:
        model.get_submodule(layer.name)
    except AttributeError:
        return None
    return layer.name


def capture_calls(model: nn.Module, layers: list[Layer], inputs: tuple[Any, ...],
                  kwargs: dict[str, Any], device: torch.device, dtype: torch.dtype
                  ) -> dict[str, Call]:
    """Run the model's glue on ``device`` with every layer recorded instead of run; returns
    each layer module's first call (see the module docstring)."""
    meta = meta_copy(model)
    shell = meta_copy(model)
    calls: dict[str, Call] = {}
    for layer in layers:
        name = layer_module_name(layer, shell)
        if name:
            recorder = _Recorder(meta.get_submodule(name), device, dtype, calls, name)
            set_submodule(shell, name, recorder)
    shell.to_empty(device=device)
    with torch.no_grad():
        for tensor in shell.parameters():
            if tensor.is_floating_point():
                tensor.zero_()  # glue weights: any finite value times the same
    fill_buffers(shell, model)
    real = tree_map_only(torch.Tensor, lambda t: _real_input(t, device), (inputs, kwargs))
    try:
        with torch.no_grad():
            shell(*real[0], **real[1])
    except Exception as exc:  # the user's model: any failure is reported, not a crash
        raise ValidationError(f"running the model's own forward on {device} with its layers "
                              f"recorded failed: {type(exc).__name__}: {exc}") from None
    return calls


def fill_buffers(module: nn.Module, source: nn.Module) -> None:
    """Give ``module``'s buffers, uninitialised by ``to_empty``, values: ``source``'s where it
    holds real ones of the same shape, else zeros. Leftover memory would be any bits at all:
    position ids that index out of range, NaNs, or denormals that slow a CPU down."""
    real = dict(source.named_buffers())
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            value = real.get(name)
            if (value is not None and value.device.type != "meta"
                    and value.shape == buffer.shape):
                buffer.copy_(value)
            else:
                buffer.zero_()


def _real_input(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A model input of the same shape on ``device``: token ids stay valid (zeros)."""
    if t.is_floating_point():
        return torch.randn(t.shape, dtype=t.dtype, device=device)
    if t.device.type != "meta":
        return t.to(device)
    return torch.zeros(t.shape, dtype=t.dtype, device=device)


_SHARD = re.compile(r"Shard\((\d+)\)")


def local_layer(model: nn.Module, name: str, plan: Plan, device: torch.device,
                dtype: torch.dtype) -> nn.Module:
    """The module ``name`` as one tensor-parallel rank holds it, real, on ``device``."""
    module = meta_copy(model.get_submodule(name))
    tp = plan.config.tp
    prefix = f"{name}." if name else ""
    for entry in plan.sharding:
        if not (entry.module == name or entry.module.startswith(prefix)):
            continue
        owner = module.get_submodule(entry.module[len(prefix):] if entry.module != name
                                     else "")
        for local, sharding in entry.params.items():
            match = _SHARD.fullmatch(sharding.placements.get("tp", ""))
            if tp == 1 or match is None:
                continue
            dim = int(match[1])
            old = getattr(owner, local)
            shape = list(old.shape)
            shape[dim] //= tp
            setattr(owner, local, nn.Parameter(torch.empty(shape, dtype=old.dtype,
                                                           device="meta"), old.requires_grad))
        _match_sizes(owner)
        if entry.style == "attention" and tp > 1:
            localise_heads(owner, tp)
    module.to_empty(device=device)
    fill_buffers(module, model.get_submodule(name))
    module.to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
    return module


def _match_sizes(module: nn.Module) -> None:
    """Make a module's size attributes those of its (now local) weight: GPT-2's ``Conv1D``
    reshapes its output by ``nf``; ``nn.Linear``'s are only read, but should not lie."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return
    if isinstance(getattr(module, "nf", None), int):
        setattr(module, "nf", weight.shape[1])  # noqa: B010 - mypy takes nf for a submodule
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape


def materialise(call: Call, dtype: torch.dtype) -> Call:
    """A copy of ``call`` whose floating tensors have the compute dtype, the activation a fresh
    leaf that asks for its gradient (as the input a stage receives)."""
    args, kwargs = tree_map_only(
        torch.Tensor, lambda t: t.detach().to(dtype) if t.is_floating_point() else t,
        (call.args, call.kwargs))
    fresh = Call(args, kwargs, call.activation)
    value = fresh.activation_value()
    if value is not None:
        args, kwargs = fresh.with_activation(value.detach().requires_grad_(True))
        fresh = Call(args, kwargs, call.activation)
    return fresh


def with_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t``'s first sample repeated ``rows`` times along dim 0: an input batch of another size
    (values do not change what a step costs)."""
    return t[:1].expand(rows, *t.shape[1:]).contiguous()


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a layer hands on: itself, ``logits``/``last_hidden_state``, or the first."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    _, tensor = first_tensor(tuple(out) if isinstance(out, (tuple, list)) else (out,), {})
    return tensor
