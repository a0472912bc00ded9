"""Train a small Hugging Face Llama on 4 CPU processes from a plan, checkpoint, and resume under
a different plan.

    python examples/train_cpu.py            # plans, then runs both phases with torchrun

Phase 1 trains 3 steps under tp=2 x dp=2 and saves a sharded checkpoint; phase 2 loads it under
pp=2 x dp=2 and trains 2 more steps. Inside torchrun the script reads its plan from
$AUTOPAR_PLAN (what `autopar run plan.json -- examples/train_cpu.py` sets).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import autopar
from autopar.executor import checkpoint

GLOBAL_BATCH, SEQ, VOCAB = 8, 16, 128


def build(device: str = "cpu") -> torch.nn.Module:
    import transformers as T

    config = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                           max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        return T.LlamaForCausalLM(config)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1),
                        generator=torch.Generator().manual_seed(step))
    return ids[:, :-1], ids[:, 1:]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def make_plan(path: Path, **pins: int) -> None:
    """Plan the model (on the meta device) for 4 CPU processes with some degrees pinned."""
    ids = torch.zeros(2, SEQ, dtype=torch.long, device="meta")
    plan = autopar.plan(build("meta"), autopar.Cluster.from_profile("cpu", devices_per_node=4),
                        example_inputs=(ids,), global_batch_size=GLOBAL_BATCH,
                        precision="fp32", constraints={"cp": 1, "recompute": ("none",), **pins})
    plan.save(path)
    c = plan.config
    print(f"plan {path.name}: dp={c.dp} tp={c.tp} pp={c.pp} zero={c.zero_stage}")


def train(steps: int, ckpt: str) -> None:
    """One torchrun process: parallelize, resume if a checkpoint exists, train, save."""
    plan = autopar.Plan.load(os.environ["AUTOPAR_PLAN"])
    model = autopar.parallelize(build(), plan)
    opt = model.build_optimizer(torch.optim.AdamW, lr=1e-3)
    start = checkpoint.load(model, opt, ckpt) if Path(ckpt, "COMPLETE").exists() else 0
    for step in range(start, start + steps):
        loss = model.train_step(batch(step), loss_fn)
        opt.step()
        opt.zero_grad()
        if torch.distributed.get_rank() == 0:
            print(f"step {step}: loss {loss.item():.5f}", flush=True)
    checkpoint.save(model, opt, ckpt, step=start + steps)
    torch.distributed.destroy_process_group()


def main() -> None:
    if "AUTOPAR_PLAN" in os.environ:
        train(int(sys.argv[1]), sys.argv[2])
        return
    work = Path(tempfile.mkdtemp(prefix="autopar-example-"))
    ckpt = str(work / "checkpoint")
    for name, pins, steps in (("tp2dp2.json", {"tp": 2, "dp": 2, "pp": 1}, 3),
                              ("pp2dp2.json", {"pp": 2, "dp": 2, "tp": 1}, 2)):
        make_plan(work / name, **pins)
        subprocess.run([sys.executable, "-m", "autopar", "run", str(work / name), "--",
                        __file__, str(steps), ckpt], check=True)


if __name__ == "__main__":
    main()
