"""``ParallelModel``: this rank's share of a model under a plan, and one training step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from autopar.executor import amp
from autopar.executor.cp import shard_sequence
from autopar.executor.dp import average_grads, sum_grads
from autopar.executor.errors import ExecutorError
from autopar.executor.layout import Layout
from autopar.executor.pp import build_schedule, build_stages
from autopar.executor.split import inner_model, model_output, pop_positional

Batch = tuple[Any, torch.Tensor]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def as_kwargs(inputs: Any) -> dict[str, torch.Tensor]:
    """The model's inputs as keyword arguments (positional ones as ``_arg<i>``, which
    ``pop_positional`` takes back out)."""
    if isinstance(inputs, dict):
        return dict(inputs)
    args = inputs if isinstance(inputs, tuple | list) else (inputs,)
    return {f"_arg{i}": a for i, a in enumerate(args)}


def _slice(value: Any, start: int, stop: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    if isinstance(value, dict):
        return {k: _slice(v, start, stop) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_slice(v, start, stop) for v in value)
    return value


def _rows(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    if isinstance(value, dict):
        return _rows(next(iter(value.values())))
    return _rows(value[0])


class Optimizers:
    """One optimizer per pipeline chunk of this rank, stepped together."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


class ParallelModel:
    """The model parts this rank runs (``parts``: one per pipeline chunk), with the mesh."""

    def __init__(self, parts: list[nn.Module], chunk_ids: list[int], layout: Layout,
                 mesh: DeviceMesh, replicas: DeviceMesh, device: torch.device,
                 ties: list[tuple[list[nn.Parameter], dist.ProcessGroup]],
                 autocast: torch.dtype | None = None) -> None:
        self.parts = parts
        self.chunk_ids = chunk_ids
        self.layout = layout
        self.mesh = mesh
        self.replicas = replicas
        """The ranks whose gradients are averaged together (dp, or dp x cp)."""
        self.device = device
        self.config = layout.config
        self.ties = ties
        self.autocast = autocast
        self.tied_names: list[list[str]] = []
        """The names of each parameter the user's model holds under several names."""
        """The dtype forwards run in under ``torch.autocast`` (``amp``; None: float32, or FSDP's
        policy casts). Pipeline chunks enter it themselves."""
        self._stages = (build_stages(parts, chunk_ids, len(layout.chunks), device, mesh["pp"])
                        if self.config.pp > 1 else [])
        self._schedules: dict[int, Any] = {}

    # --- coordinates -----------------------------------------------------------------------
    def coordinate(self, dim: str) -> int:
        return self.mesh.get_local_rank(dim)

    @property
    def microbatches(self) -> int:
        return self.config.micro_batches(self.layout.global_batch_size)

    def shard_batch(self, batch: Any) -> Any:
        """This rank's rows of a global batch: its data-parallel replica's slice of dim 0."""
        rows = _rows(batch)
        if rows != self.layout.global_batch_size:
            raise ExecutorError(f"the global batch has {rows} samples but the plan's "
                                f"global_batch_size is {self.layout.global_batch_size}")
        per = rows // self.config.dp
        start = self.coordinate("dp") * per
        return _slice(batch, start, start + per)

    def modules(self) -> list[nn.Module]:
        """This rank's copies of the user's model (parameter names as in the model)."""
        return [inner_model(p) for p in self.parts]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded weights of the layers this rank runs (a collective: call on all
        ranks), on the CPU, named as in the user's model."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        full: dict[str, torch.Tensor] = {}
        for module in self.modules():
            state = get_model_state_dict(module, options=options)
            full.update({k: v.detach().cpu().clone() for k, v in state.items()
                         if isinstance(v, torch.Tensor)})
        return full

    def parameters(self) -> Iterator[nn.Parameter]:
        for part in self.parts:
            yield from part.parameters()

    def build_optimizer(self, cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                        **kwargs: Any) -> Optimizers:
        """An optimizer over this rank's local shards (one per pipeline chunk)."""
        return Optimizers([cls(part.parameters(), **kwargs) for part in self.parts])

    # --- one step ---------------------------------------------------------------------------
    def train_step(self, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        """Forward and backward over this rank's share of the global batch (``batch`` is the
        global batch or this replica's slice of it); returns the loss averaged over the whole
        global batch, on every rank. Gradients are left for the optimizer's step. Under
        context parallelism each rank keeps its part of every sequence (``shard_sequence``)."""
        if _rows(batch) == self.layout.global_batch_size and self.config.dp > 1:
            batch = self.shard_batch(batch)
        inputs, target = batch
        if self.config.cp > 1:
            inputs, target = shard_sequence(as_kwargs(inputs), target, self.config.cp,
                                            self.coordinate("cp"))
        inputs = _to(inputs, self.device)
        target = _to(target, self.device)
        if self.config.pp > 1:
            local, count = self._pipeline_step(inputs, target, loss_fn)
        else:
            local, count = self._plain_step(inputs, target, loss_fn)
        if not isinstance(self.parts[0], DistributedDataParallel):
            self._sync_manual()
        for params, group in self.ties:
            sum_grads(params, group)
        totals = torch.stack([local.detach().to(torch.float64).cpu().reshape(()),
                              torch.tensor(float(count), dtype=torch.float64)])
        if dist.get_world_size() > 1:
            dist.all_reduce(totals)
        return (totals[0] / totals[1]).to(torch.float32)

    def _sync_manual(self) -> None:
        """Average gradients over dp (x cp) where DDP does not wrap the model (tensor
        parallel, zero-bubble schedule: ``dp.ddp_applies``)."""
        if self.config.zero_stage == 0 and self.replicas.size() > 1:
            average_grads(self.parameters(), self.replicas.get_group(), self.replicas.size())

    def _plain_step(self, inputs: Any, target: torch.Tensor, loss_fn: LossFn
                    ) -> tuple[torch.Tensor, int]:
        model = self.parts[0]
        n = self.microbatches
        per = _rows(target) // n
        total = torch.zeros((), device=self.device)
        kwargs = as_kwargs(inputs)
        for i in range(n):
            mb = _slice(kwargs, i * per, (i + 1) * per)
            args = pop_positional(mb)
            last = i == n - 1
            sync = (model.no_sync() if isinstance(model, DistributedDataParallel) and not last
                    else nullcontext())
            with sync:
                with amp.autocast(self.device, self.autocast):
                    out = model_output(model(*args, **mb))
                    loss = loss_fn(out, target[i * per:(i + 1) * per])
                (loss / n).backward()
            total += loss.detach() / n
        return total, 1

    def _pipeline_step(self, inputs: Any, target: torch.Tensor, loss_fn: LossFn
                       ) -> tuple[torch.Tensor, int]:
        schedule: Any = self._schedules.get(id(loss_fn))
        if schedule is None:
            schedule = build_schedule(self._stages, self.config, self.microbatches, loss_fn)
            self._schedules = {id(loss_fn): schedule}
        kwargs = as_kwargs(inputs)
        is_last = any(s.is_last for s in self._stages)
        losses: list[torch.Tensor] = []
        schedule.step(target=target if is_last else None, losses=losses if is_last else None,
                      **kwargs)
        if not is_last:
            return torch.zeros((), device=self.device), 0
        return torch.stack([x.detach() for x in losses]).mean(), 1


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value
