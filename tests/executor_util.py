"""Shared pieces of the executor tests: small models, plans without a solver, and a launcher
that runs a function on N CPU processes (gloo) and collects what each returns."""

from __future__ import annotations

import functools
import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import autopar
from autopar.executor.split import model_output
from autopar.plan import Plan, SolverStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...],
           out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        result = fn(rank, *args)
        torch.save(result, os.path.join(out, f"{rank}.pt"))
    except BaseException:
        with open(os.path.join(out, f"{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Run ``fn(rank, *args)`` on ``world`` forked processes; the list of their results."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_entry, args=(world, free_port(), fn, args, out),
                                 nprocs=world, join=False, start_method="fork")
        try:
            while not ctx.join():
                pass
        except Exception as exc:
            errors = [Path(out, f).read_text() for f in sorted(os.listdir(out))
                      if f.endswith(".err")]
            raise RuntimeError("\n".join(errors) or str(exc)) from None
        return [torch.load(os.path.join(out, f"{r}.pt"), weights_only=False)
                for r in range(world)]


# --- models ---------------------------------------------------------------------------------

def llama(layers: int = 4, attention: str = "eager") -> nn.Module:
    import transformers as T
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                        max_position_embeddings=32, use_cache=False)
    cfg._attn_implementation = attention
    return T.LlamaForCausalLM(cfg)


def gpt2(layers: int = 4) -> nn.Module:
    import transformers as T
    cfg = T.GPT2Config(n_embd=32, n_layer=layers, n_head=4, vocab_size=64, n_positions=32,
                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                       bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return T.GPT2LMHeadModel(cfg)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "llama": llama, "llama_sdpa": functools.partial(llama, attention="sdpa"), "gpt2": gpt2,
    "mlp": mlp}
SEQ = 8


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]()


def data(name: str, batch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    if name == "mlp":
        return torch.randn(batch, 16, generator=g), torch.randint(0, 8, (batch,), generator=g)
    ids = torch.randint(0, 64, (batch, SEQ + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1))


def example(name: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    return (data(name, batch, 0)[0],)


def graph_of(name: str) -> autopar.ModelGraph:
    with torch.device("meta"):
        torch.manual_seed(0)
        model = MODELS[name]()
    x = example(name)[0].to("meta")
    return autopar.trace(model, (x,))


def make_plan(graph: autopar.ModelGraph, global_batch: int, precision: str = "fp32",
              **config: Any) -> Plan:
    """A plan for ``config`` without running the solver (its estimate is ``estimate()``'s)."""
    from autopar.planner import fingerprint

    cfg = autopar.ParallelConfig(**config)
    cluster = autopar.Cluster.from_profile("cpu", devices_per_node=cfg.world_size)
    est = autopar.estimate(graph, cluster, cfg, global_batch_size=global_batch,
                           precision=precision, optimizer="sgd")
    stats = SolverStats(shapes=1, pruned_by_time=0, pruned_by_memory=0, solved=1, candidates=1,
                        optimal=True, gap=0.0, lower_bound_s=0.0)
    fields: dict[str, Any] = dict(
        model=fingerprint(graph), world_size=cfg.world_size, global_batch_size=global_batch,
        precision=precision, optimizer="sgd", config=cfg, estimate=est, solver=stats)
    if Plan.model_fields["cluster"].annotation is str:  # plans before mesh/sharding fields
        fields["cluster"] = cluster.name
    else:
        from autopar.plan_layout import plan_layout  # type: ignore[import-not-found]

        fields["cluster"] = cluster
        fields.update(plan_layout(graph, cluster, cfg, global_batch, precision, "sgd", est))
    return Plan(**fields)


def reference(name: str, global_batch: int, steps: int, lr: float = 0.1, momentum: float = 0.0,
              model: nn.Module | None = None, autocast: torch.dtype | None = None
              ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process training (of ``build(name)`` unless ``model`` is given; its forward and
    loss under CPU ``torch.autocast`` to ``autocast`` if given): the losses and the final
    weights."""
    model = build(name) if model is None else model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    for step in range(steps):
        x, y = data(name, global_batch, step)
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            out = model_output(model(x))
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_ranks(rank: int, name: str, plan: Plan, graph: autopar.ModelGraph, steps: int,
                lr: float = 0.1) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One rank's training under ``plan``: the losses and the full weights it holds."""
    pm = autopar.parallelize(build(name), plan, graph=graph)
    return train_parallel(pm, name, plan, steps, lr)


def train_parallel(pm: Any, name: str, plan: Plan, steps: int, lr: float = 0.1
           ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """SGD steps of a parallelized model on the test data: the losses and the full weights."""
    opt = pm.build_optimizer(torch.optim.SGD, lr=lr)
    losses = []
    for step in range(steps):
        loss = pm.train_step(data(name, plan.global_batch_size, step), loss_fn)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, pm.full_state_dict()


Recorded = tuple[list[float], dict[str, torch.Tensor], list[tuple[int, ...]]]


def train_recording_outputs(rank: int, name: str, plan: Plan, graph: autopar.ModelGraph,
                            steps: int) -> Recorded:
    """``train_ranks``, also recording the shape of every output of this rank's parts (what a
    pipeline stage sends, or the logits)."""
    pm = autopar.parallelize(build(name), plan, graph=graph)
    shapes: list[tuple[int, ...]] = []
    for part in pm.parts:
        part.register_forward_hook(
            lambda _m, _a, out: shapes.append(tuple(model_output(out).shape)))
    losses, weights = train_parallel(pm, name, plan, steps)
    return losses, weights, shapes


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def compare(results: list[tuple[list[float], dict[str, torch.Tensor]]],
            ref: tuple[list[float], dict[str, torch.Tensor]]) -> float:
    """The largest relative difference of losses and weights from the reference."""
    ref_losses, ref_weights = ref
    worst = 0.0
    merged: dict[str, torch.Tensor] = {}
    for losses, weights in results:
        for a, b in zip(losses, ref_losses, strict=True):
            worst = max(worst, abs(a - b) / abs(b))
        merged.update(weights)
    missing = set(ref_weights) - set(merged)
    assert not missing, f"weights not held by any rank: {sorted(missing)[:5]}"
    for key, value in ref_weights.items():
        worst = max(worst, rel_diff(merged[key], value))
    return worst


def train_with_checkpoints(rank: int, name: str, plan: Plan, graph: autopar.ModelGraph,
                           steps: int, root: str, die_at: int | None = None
                           ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train to ``steps``, resuming from the newest checkpoint under ``root`` and saving one
    after every step; rank 1 dies just before step ``die_at``."""
    from autopar.executor import checkpoint

    pm = autopar.parallelize(build(name), plan, graph=graph)
    opt = pm.build_optimizer(torch.optim.SGD, lr=0.1, momentum=0.9)
    start = 0
    last = checkpoint.latest(root)
    if last is not None:
        start = checkpoint.load(pm, opt, last)
    losses = []
    for step in range(start, steps):
        if step == die_at and rank == 1:
            os._exit(1)
        loss = pm.train_step(data(name, plan.global_batch_size, step), loss_fn)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        checkpoint.save(pm, opt, os.path.join(root, f"step-{step + 1}"), step=step + 1)
    return losses, pm.full_state_dict()


# --- meta-device models -----------------------------------------------------------------------

def index_init(model: nn.Module) -> None:
    """A deterministic ``init_weights``: element ``i`` (row-major) of parameter ``name`` is
    ``0.1 * sin(0.7 * i + crc32(name) % 97)``. It needs only the element's position, so each
    shard is filled with exactly its slice of the full initialisation without building the
    full tensor. Hugging Face rotary buffers are filled by the model's own ``_init_weights``."""
    import zlib

    from autopar.executor.materialise import local_shard

    for name, p in model.named_parameters():
        local, where = local_shard(p)
        flat = torch.zeros((), dtype=torch.float64)
        for dim, part in enumerate(where):
            stride = int(torch.tensor(p.shape[dim + 1:]).prod())
            index = (torch.arange(part.start, part.stop, dtype=torch.float64)
                     if isinstance(part, slice) else part.to(torch.float64))
            flat = flat.unsqueeze(-1) + index * stride
        phase = zlib.crc32(name.encode()) % 97
        local.copy_(0.1 * torch.sin(0.7 * flat + phase))
    for module in model.modules():
        if hasattr(module, "original_inv_freq"):
            model._init_weights(module)  # type: ignore[operator]


def build_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return MODELS[name]()


def reference_init(name: str, global_batch: int, steps: int
                   ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process training of the model built on the CPU and initialised by
    ``index_init``."""
    model = build(name)
    with torch.no_grad():
        index_init(model)
    return reference(name, global_batch, steps, model=model)


def local_numel(pm: Any) -> int:
    """Elements of the parameters this rank holds (its local shards)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in pm.parameters())


def train_meta_ranks(rank: int, name: str, plan: Plan, graph: autopar.ModelGraph, steps: int,
                     init: bool = True) -> dict[str, Any]:
    """``train_ranks`` of a model built on the meta device and materialised by
    ``autopar.parallelize`` (with ``index_init``, or the modules' ``reset_parameters`` on
    rank-dependent random streams): the losses, the initial and final full weights, and the
    parameter elements this rank allocated."""
    torch.manual_seed(rank)
    pm = autopar.parallelize(build_meta(name), plan, graph=graph,
                             init_weights=index_init if init else None)
    numel = local_numel(pm)
    initial = pm.full_state_dict()
    losses, weights = train_parallel(pm, name, plan, steps)
    return dict(losses=losses, initial=initial, weights=weights, numel=numel)
