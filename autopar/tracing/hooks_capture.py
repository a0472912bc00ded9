"""Fallback capture path: run the model eagerly on fake tensors and log every ATen op.

Used where ``torch.export`` cannot capture the model (data-dependent Python control flow,
unsupported constructs). The model runs as written, via ``torch.func.functional_call`` with fake
CPU parameters, so nothing is allocated and the user's module is left untouched. Module hooks
give each op its owning module, a dispatch mode logs the ops and their dataflow, the same
``CostRecorder`` as the export path measures FLOPs, bytes and saved tensors, and
``ExpectedRouting`` lets mixture-of-experts routing run at its expected token counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from autopar.tracing.fake_kernels import FakeKernelShims
from autopar.tracing.op_classes import classify, op_name
from autopar.tracing.recorder import CostRecorder
from autopar.tracing.records import OpRecord, is_causal
from autopar.tracing.routing import ExpectedRouting
from autopar.tracing.tensors import storage_key, tensor_bytes, tensors_in


@contextmanager
def module_stack(model: nn.Module, on_boundary: Callable[[], None] = lambda: None
                 ) -> Iterator[list[tuple[str, str, int]]]:
    """(path, type, call number) of the modules currently running, innermost last.

    The call number counts earlier calls of the same module (0 the first time).
    ``on_boundary`` runs whenever a module of ``model`` starts or ends.
    """
    paths = {id(m): (p, type(m).__name__) for p, m in model.named_modules()}
    stack: list[tuple[str, str, int]] = []
    calls: dict[int, int] = defaultdict(int)

    def enter(module: nn.Module, args: Any) -> None:
        if id(module) in paths:
            on_boundary()
            stack.append((*paths[id(module)], calls[id(module)]))
            calls[id(module)] += 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in paths:
            on_boundary()
            if stack and stack[-1][:2] == paths[id(module)]:
                stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(enter)
    post = nn.modules.module.register_module_forward_hook(leave)
    try:
        yield stack
    finally:
        pre.remove()
        post.remove()


class _OpLogger(TorchDispatchMode):
    """Makes one ``OpRecord`` per dispatched ATen op, with dataflow by tensor identity."""

    def __init__(self, recorder: CostRecorder, routing: ExpectedRouting,
                 param_names: dict[int, str]) -> None:
        super().__init__()
        self.recorder = recorder
        self.routing = routing
        self.stack: list[tuple[str, str, int]] = []
        self.param_names = param_names
        self.records: list[OpRecord] = []
        self._producer: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []
        self._counts: dict[str, int] = defaultdict(int)
        self._pending: list[tuple[str, Any]] = []
        self.current_op = ""
        """The op being dispatched: if the model fails, the op it failed in."""

    def flush(self) -> None:
        """Claim the autograd nodes of the ops logged so far, in execution order.

        Autograd attaches ``grad_fn`` only after dispatch returns, so claiming waits for the next
        module boundary (or the end), outside any dispatch: reading ``grad_fn`` of a view whose
        base was written in place regenerates it, which must not happen mid-dispatch.
        """
        pending, self._pending = self._pending, []
        for name, out in pending:
            self.recorder.claim_grad_fns(out, name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        base = op_name(func)
        name = f"{base}_{self._counts[base]}" if self._counts[base] else base
        self._counts[base] += 1
        self.recorder.owner = name
        self.current_op = str(func)
        out = func(*args, **kwargs)
        module, module_type, _ = self.stack[-1] if self.stack else ("", "", 0)
        op_class = classify(func, module_type)
        ins = tensors_in(args) + tensors_in(kwargs)
        outs = tensors_in(out)
        inputs = list(dict.fromkeys(self._producer[id(t)] for t in ins if id(t) in self._producer))
        input_bytes: dict[str, int] = {}
        for t in ins:
            if id(t) in self._producer:
                input_bytes.setdefault(self._producer[id(t)], tensor_bytes(t))
        for t in outs:
            self._producer[id(t)] = name
            self._alive.append(t)
        self.records.append(OpRecord.measured(
            name=name, target=str(func), module=module, module_type=module_type,
            op_class=op_class, in_tensors=ins, out_tensors=outs,
            inputs=inputs, input_bytes=input_bytes,
            params=[self.param_names[id(t)] for t in ins if id(t) in self.param_names],
            fwd_flops=self.recorder.fwd_flops.pop(name, 0),
            routed=any(self.routing.is_routed(t) for t in outs),
            causal=op_class == "attention" and is_causal(func, args, kwargs),
            calls={path: call for path, _, call in self.stack if call},
        ))
        self._pending.append((name, out))
        return out


def fake_like(t: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    """A fake CPU tensor with ``t``'s shape and dtype (call inside a ``FakeTensorMode``)."""
    fake = torch.empty(tuple(t.shape), dtype=t.dtype, device="cpu")
    return fake.requires_grad_(requires_grad and fake.is_floating_point())


def capture_with_hooks(model: nn.Module, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> list[OpRecord]:
    """Run ``model`` once forward and backward on fake tensors; its ops in execution order."""
    with FakeTensorMode(), FakeKernelShims():
        params = {n: fake_like(p, p.requires_grad) for n, p in model.named_parameters()}
        buffers = {n: fake_like(b) for n, b in model.named_buffers()}
        fake_args = tree_map(lambda x: fake_like(x) if isinstance(x, torch.Tensor) else x, args)
        fake_kwargs = tree_map(lambda x: fake_like(x) if isinstance(x, torch.Tensor) else x,
                               kwargs)
        recorder = CostRecorder(param_storages=[storage_key(p) for p in params.values()])
        param_names = {id(p): n for n, p in params.items()}
        routing = ExpectedRouting()
        logger = _OpLogger(recorder, routing, param_names)
        with module_stack(model, on_boundary=logger.flush) as logger.stack:
            try:
                with recorder.forward(), routing, logger:
                    outputs = torch.func.functional_call(
                        model, {**params, **buffers}, fake_args, fake_kwargs, strict=False)
            except Exception as exc:
                exc.autopar_op = logger.current_op  # type: ignore[attr-defined]
                raise
            logger.flush()
        recorder.run_backward(outputs)
    records = logger.records
    recorder.fill(records)
    return records
