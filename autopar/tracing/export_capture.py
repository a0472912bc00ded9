"""Primary capture path: ``torch.export`` (non-strict) plus a costed replay of its graph.

``torch.export`` gives the ATen graph with each op's owning module. To cost it, the exported
graph is replayed node by node on fake CPU tensors, forward and backward, under a
``CostRecorder``: the fake tensors allocate nothing, and CPU fakes dispatch to the same fused
attention kernel a real run uses, so saved activations are those of a real step.
"""

from __future__ import annotations

import contextlib
import io
import operator
from typing import Any

import torch
import torch.fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from autopar.tracing.export_passes import eager_causal_attention
from autopar.tracing.fake_kernels import FakeKernelShims
from autopar.tracing.op_classes import classify
from autopar.tracing.recorder import CostRecorder
from autopar.tracing.records import OpRecord, call_number, clean_module_path, is_causal
from autopar.tracing.tensors import storage_key, tensor_bytes, tensors_in

_HOP = torch.ops.higher_order
_CPU = torch.device("cpu")


def _to_cpu(x: Any) -> Any:
    """Graph constants name the device the model was exported on; the replay runs on fake CPU."""
    if isinstance(x, torch.device) and x.type == "meta":
        return _CPU
    return x


def _module_of(node: torch.fx.Node) -> tuple[str, str, dict[str, int]]:
    """The innermost owning module, its class name, and call numbers of repeated calls."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "", {}
    calls = {clean_module_path(path): call_number(key) for key, (path, _) in stack.items()
             if call_number(key)}
    path, mtype = list(stack.values())[-1]
    type_name = mtype if isinstance(mtype, str) else getattr(mtype, "__name__", str(mtype))
    return clean_module_path(path), type_name.rsplit(".", 1)[-1], calls


class _Replay(torch.fx.Interpreter):
    """Runs an exported graph on fake CPU tensors, recording each call as an ``OpRecord``."""

    def __init__(self, gm: torch.fx.GraphModule, recorder: CostRecorder,
                 param_names: dict[str, str], records: list[OpRecord] | None) -> None:
        super().__init__(gm)
        self.recorder = recorder
        self.param_names = param_names
        self.records = records

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        args = torch.fx.node.map_aggregate(args, _to_cpu)
        kwargs = torch.fx.node.map_aggregate(kwargs, _to_cpu)
        if target is _HOP.wrap_with_set_grad_enabled:
            with torch.set_grad_enabled(args[0]):
                return self._nested(args[1], args[2:])
        if target is _HOP.wrap_with_autocast:
            device, dtype, enabled, cache = args[:4]
            with torch.autocast(device_type="cpu", dtype=dtype, enabled=enabled,
                                cache_enabled=cache):
                return self._nested(args[4], args[5:])
        return target(*args, **kwargs)

    def _nested(self, gm: torch.fx.GraphModule, args: Any) -> Any:
        """Higher-order wrappers (no_grad/autocast regions) replay inside the calling node."""
        return _Replay(gm, self.recorder, {}, None).run(*args)

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op != "call_function" or self.records is None:
            return super().run_node(n)
        self.recorder.owner = n.name
        result = super().run_node(n)
        self.recorder.claim_grad_fns(result, n.name)
        self.records.append(self._record(n, result))
        return result

    def _record(self, n: torch.fx.Node, result: Any) -> OpRecord:
        module, module_type, calls = _module_of(n)
        op_class = classify(n.target, module_type)
        outs = tensors_in(result)
        inputs = [a for a in n.all_input_nodes if a.op == "call_function"]
        arg_tensors = [self.env[a] for a in n.all_input_nodes
                       if isinstance(self.env[a], torch.Tensor)]
        target = n.target
        name = "getitem" if target is operator.getitem else str(target)
        if target is operator.getitem:
            op_class = "view"
        return OpRecord.measured(
            name=n.name, target=name, module=module, module_type=module_type,
            op_class=op_class, in_tensors=arg_tensors, out_tensors=outs,
            inputs=[a.name for a in inputs],
            input_bytes={a.name: sum(tensor_bytes(t) for t in tensors_in(self.env[a]))
                         for a in inputs},
            params=[self.param_names[a.name] for a in n.all_input_nodes
                    if a.name in self.param_names],
            fwd_flops=self.recorder.fwd_flops.pop(n.name, 0),
            calls=calls,
            causal=op_class == "attention" and is_causal(n.target, n.args, dict(n.kwargs)),
        )


def _fake_placeholder(val: Any, requires_grad: bool) -> Any:
    if not isinstance(val, torch.Tensor):
        return val
    t = torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=_CPU)
    return t.requires_grad_(requires_grad and t.is_floating_point())


def capture_with_export(model: nn.Module, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> list[OpRecord]:
    """Export ``model`` and replay its graph; returns its ops in execution order, costed."""
    # On failure torch.export prints its partial graph to stderr; the caller reports the
    # failure itself (and falls back), so keep that dump away from the user.
    with contextlib.redirect_stderr(io.StringIO()):
        ep = torch.export.export(model, args, kwargs=kwargs, strict=False)
    eager_causal_attention(ep.graph_module)
    sig = ep.graph_signature
    param_names = dict(sig.inputs_to_parameters)
    trainable = {n for n, fqn in param_names.items()
                 if model.get_parameter(fqn).requires_grad}
    records: list[OpRecord] = []
    with FakeTensorMode(allow_non_fake_inputs=True), FakeKernelShims():
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        inputs = [_fake_placeholder(n.meta.get("val"), n.name in trainable) for n in placeholders]
        params = [t for n, t in zip(placeholders, inputs, strict=True) if n.name in param_names]
        recorder = CostRecorder(param_storages=[storage_key(t) for t in params])
        replay = _Replay(ep.graph_module, recorder, param_names, records)
        with recorder.forward():
            outputs = replay.run(*inputs)
        recorder.run_backward(outputs)
    recorder.fill(records)
    return records
