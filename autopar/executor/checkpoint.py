"""Sharded checkpoints with ``torch.distributed.checkpoint``: each rank writes its own shards of
the model and optimizer, named by parameter (flattened optimizer state), so a checkpoint written
under one plan loads under another with different degrees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from autopar.executor.errors import CheckpointError
from autopar.executor.parallel_model import Optimizers, ParallelModel

_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _parts_state(pm: ParallelModel, optimizers: Optimizers | None) -> list[dict[str, Any]]:
    states = []
    for i, module in enumerate(pm.modules()):
        state: dict[str, Any] = {f"model.{k}": v for k, v in
                                 get_model_state_dict(module, options=_OPTIONS).items()}
        if optimizers is not None:
            opt = get_optimizer_state_dict(module, optimizers.optimizers[i], options=_OPTIONS)
            state.update({f"optim.{k}": v for k, v in opt.items()})
        states.append(state)
    return states


def save(pm: ParallelModel, optimizers: Optimizers | None, path: str | os.PathLike[str],
         *, step: int = 0) -> None:
    """Write this rank's shards (a collective: call on every rank)."""
    state: dict[str, Any] = {"step": step}
    for part in _parts_state(pm, optimizers):
        state.update(part)
    dcp.save(state, checkpoint_id=str(path))
    dist.barrier()
    if dist.get_rank() == 0:
        Path(path, "COMPLETE").write_text(str(step))
    dist.barrier()


def load(pm: ParallelModel, optimizers: Optimizers | None, path: str | os.PathLike[str]) -> int:
    """Read the shards this rank needs under its own plan; returns the saved step."""
    if not Path(path, "COMPLETE").exists():
        raise CheckpointError(f"no complete checkpoint at {path}")
    parts = _parts_state(pm, optimizers)
    state: dict[str, Any] = {"step": 0}
    for part in parts:
        state.update(part)
    try:
        dcp.load(state, checkpoint_id=str(path))
    # DCP raises plain errors for missing keys and wrong shapes, wrapped (across ranks) in
    # CheckpointException, which derives from BaseException.
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from exc
    for i, (module, part) in enumerate(zip(pm.modules(), parts, strict=True)):
        model = {k[len("model."):]: state[k] for k in part if k.startswith("model.")}
        set_model_state_dict(module, model, options=_OPTIONS)
        if optimizers is not None:
            optim = {k[len("optim."):]: state[k] for k in part if k.startswith("optim.")}
            set_optimizer_state_dict(module, optimizers.optimizers[i], optim, options=_OPTIONS)
    return int(state["step"])


def latest(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step-N`` checkpoint under ``root`` (None if there is none)."""
    done = [p for p in Path(root).glob("step-*") if (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)
