"""Cut a model into one pipeline chunk: the chunk's layers run, the others are stubs.

A chunk is a copy of the model's module tree that shares the original's tensors; the
parameter-owning modules of layers outside the chunk are replaced by ``_Stub`` modules, so the
chunk holds only its own parameters and keeps the model's parameter names. The model's own
``forward`` still runs on every chunk (its glue code: masks, positions, residual adds), so
nothing about the model has to be known:

- a stub of a layer *before* the chunk returns zeros of the shape its module would produce
  (found by running a meta copy of it), and the chunk's first layer module has its input
  replaced by the activation received from the previous stage;
- the first stub *after* the chunk stops the forward and hands out its input, the activation
  sent to the next stage.

A cut must therefore be crossed by one tensor: the first input of the next layer's module.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from autopar.executor import amp
from autopar.executor.errors import ExecutorError
from autopar.tracing import Layer


class _StageExit(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__("pipeline stage boundary")
        self.value = value


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int | str, torch.Tensor]:
    """The position (or keyword) and value of a module call's first tensor argument."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return i, a
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return k, v
    raise ExecutorError("a pipeline cut lies before a module called without a tensor argument")


def pop_positional(inputs: dict[str, Any]) -> list[Any]:
    """Take the positional arguments (``_arg0``, ``_arg1``, ...) out of a model's inputs written
    as keyword arguments (``parallel_model.as_kwargs``)."""
    args: list[Any] = []
    while f"_arg{len(args)}" in inputs:
        args.append(inputs.pop(f"_arg{len(args)}"))
    return args


class _Stub(nn.Module):
    """Stands in for a module of another pipeline chunk."""

    def __init__(self, meta_module: nn.Module, name: str, after: bool,
                 device: torch.device) -> None:
        super().__init__()
        self._meta: nn.Module
        object.__setattr__(self, "_meta", meta_module)  # not registered: no parameters here
        self.stub_of = name
        self.after = after
        self.device = device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.after:
            raise _StageExit(first_tensor(args, kwargs)[1])
        margs, mkwargs = tree_map_only(torch.Tensor, lambda t: t.detach().to("meta"),
                                       (args, kwargs))
        with torch.no_grad():
            out = self._meta(*margs, **mkwargs)
        return tree_map_only(torch.Tensor, lambda t: torch.zeros(t.shape, dtype=t.dtype,
                                                                 device=self.device), out)


def _owns_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _ancestor_or_self(a: str, b: str) -> bool:
    return a == "" or a == b or b.startswith(a + ".")


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every parameter and buffer with ``model``."""
    memo: dict[int, Any] = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


class Chunk(nn.Module):
    """One pipeline chunk: ``forward(*received, **model_inputs)``.

    ``model_inputs`` are the model's own inputs (every chunk reruns the model's glue code);
    ``received`` is the activation from the previous chunk (none on the first).
    """

    def __init__(self, model: nn.Module, layers: list[Layer], keep: range, meta: nn.Module,
                 device: torch.device, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.device = device
        self.autocast = autocast
        """The mixed-precision compute dtype the chunk's forward runs under (``amp``)."""
        self.first = keep.start == 0
        self.last = keep.stop == len(layers)
        self._received: torch.Tensor | None = None
        live = [m for i in keep for m in layers[i].modules] + [layers[i].name for i in keep]
        stubbed: list[str] = []
        for i, layer in enumerate(layers):
            if i in keep:
                continue
            for name in [layer.name, *layer.modules]:
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    continue
                if (not _owns_params(module) or any(_ancestor_or_self(name, m) for m in live)
                        or any(_ancestor_or_self(s, name) for s in stubbed)):
                    continue
                set_submodule(model, name, _Stub(meta.get_submodule(name), name,
                                                  after=i >= keep.stop, device=device))
                stubbed.append(name)
        self.entry = None if self.first else layers[keep.start].name
        """The module that receives the previous chunk's activation (none on the first)."""
        if self.entry is not None:
            entry = model.get_submodule(self.entry)
            entry.register_forward_pre_hook(self._inject, with_kwargs=True)

    def _inject(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._received is None:
            return None
        where, _ = first_tensor(args, kwargs)
        value, self._received = self._received, None
        if isinstance(where, int):
            args = args[:where] + (value,) + args[where + 1:]
        else:
            kwargs = {**kwargs, where: value}
        return args, kwargs

    def forward(self, *received: torch.Tensor, **inputs: torch.Tensor) -> Any:
        args = pop_positional(inputs)
        if not self.first:
            self._received = received[0]
        try:
            with amp.autocast(self.device, self.autocast):
                out = self.model(*args, **inputs)
        except _StageExit as stop:
            return stop.value
        finally:
            self._received = None
        if self.last:
            return model_output(out)
        raise ExecutorError("a pipeline chunk ran to the model's end without reaching its cut")


def model_output(out: Any) -> Any:
    """The tensor a loss is computed from: ``logits`` of a Hugging Face output, the first
    element of a tuple, or the output itself."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def inner_model(part: nn.Module) -> nn.Module:
    """The user's model (or this chunk's copy of it) inside DDP and ``Chunk`` wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    module = part.module if isinstance(part, DistributedDataParallel) else part
    return module.model if isinstance(module, Chunk) else module
