"""Predicted vs published throughput for every calibration run in ../shared/calibration/.

Each run's model is built on the meta device from its published shape (a GPT: learned position
embeddings, GELU MLP, tied embeddings, as Megatron-LM's GPT), traced once, and estimated on
the bundled DGX A100 profile with the published parallel configuration. There is no per-run
tuning. Throughput is compared in the source's own FLOP convention (see the calibration
README): published TFLOP/s per GPU, iteration time, or MFU.

    python benchmarks/accuracy.py
"""

from __future__ import annotations

import json
import statistics
from functools import cache
from pathlib import Path
from typing import Any

import torch

import autopar
from autopar.cluster import Cluster
from autopar.config import ParallelConfig
from autopar.estimate import Estimate, estimate

CALIBRATION = Path(__file__).resolve().parents[1].parent / "shared" / "calibration"
PEAK_A100 = 312e12


def load_runs(path: Path = CALIBRATION / "published_a100.json") -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["runs"])


@cache
def gpt_graph(layers: int, hidden: int, heads: int, ffn: int, vocab: int,
              seq: int) -> autopar.ModelGraph:
    """The traced graph of a Megatron-style GPT of this shape, in bf16 (built on meta), with
    the unfused attention the published runs used."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn,
                        vocab_size=vocab, n_positions=seq, use_cache=False,
                        activation_function="gelu")
    # Megatron-LM in 2021-22 ran unfused attention (QK^T bmm, fused scale-mask-softmax,
    # dropout, bmm with V), not flash attention: trace the same structure.
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    ids = torch.zeros(1, seq, dtype=torch.long)
    return autopar.trace(model, (ids,), {"labels": ids})


def published_config(run: dict[str, Any]) -> tuple[ParallelConfig, int]:
    """The run's parallel configuration and global batch, with stated assumptions.

    Unpublished fields: micro-batch size 1; for "interleaved (chunks not stated)" two model
    chunks per device when the layers split evenly, else plain 1F1B; a missing global batch
    is the number of GPUs (as the calibration notes say).
    """
    p, b, m = run["parallel"], run["batch"], run["model"]
    vpp = p.get("vpp")
    if isinstance(vpp, int) and p["pp"] > 1:
        schedule, virtual = "interleaved", vpp
    elif isinstance(vpp, str) and p["pp"] > 1 and m["layers"] % (2 * p["pp"]) == 0:
        schedule, virtual = "interleaved", 2
    else:
        schedule, virtual = "1f1b", 1
    recompute = {"full": "full", "selective": "selective"}.get(p.get("recompute"), "none")
    config = ParallelConfig(dp=p["dp"], tp=p["tp"], pp=p["pp"], cp=p.get("cp", 1),
                            sequence_parallel=bool(p.get("sequence_parallel")),
                            schedule=schedule, virtual_stages=virtual, recompute=recompute,
                            micro_batch_size=b.get("micro_batch") or 1)
    global_batch = b.get("global_batch_seqs") or run["hardware"]["num_gpus"]
    return config, global_batch


def convention_flops(run: dict[str, Any], convention: str, global_batch: int) -> float:
    """FLOPs per iteration by the source's formula (calibration README)."""
    m = run["model"]
    B, s, L, h, V = global_batch, m["seq_len"], m["layers"], m["hidden"], m["vocab"]
    if convention == "ptdp_hfu":
        return 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))
    kv, heads, ffn = m.get("kv_heads", m["heads"]), m["heads"], m["ffn_hidden"]
    mlp = (ffn / h) * (1.5 if m.get("mlp") == "swiglu" else 1)
    return 12 * B * s * L * h * h * ((1 + kv / heads + s / h) + mlp + V / (2 * L * h))


def compare(run: dict[str, Any]) -> tuple[str, float, float, Estimate]:
    """(metric, published, predicted, estimate) for one run."""
    m = run["model"]
    graph = gpt_graph(m["layers"], m["hidden"], m["heads"], m["ffn_hidden"], m["vocab"],
                      m["seq_len"])
    config, global_batch = published_config(run)
    gpus = run["hardware"]["num_gpus"]
    cluster = Cluster.from_profile("dgx-a100", nodes=gpus // 8)
    est = estimate(graph, cluster, config, global_batch_size=global_batch)
    metrics = {x["kind"]: x for x in run["published"]["metrics"]}
    if "tflops_per_gpu" in metrics:
        x = metrics["tflops_per_gpu"]
        predicted = convention_flops(run, x["convention"], global_batch) / est.step_time / gpus
        return "TFLOP/s/GPU", x["value"], predicted / 1e12, est
    if "iter_time_s" in metrics:
        return "iteration s", metrics["iter_time_s"]["value"], est.step_time, est
    x = metrics["mfu_pct"]
    flops = convention_flops(run, x["convention"], global_batch)
    return "MFU %", x["value"], 100 * flops / est.step_time / gpus / PEAK_A100, est


def throughput_error(metric: str, published: float, predicted: float) -> float:
    """Relative error of predicted throughput (iteration times invert)."""
    if metric == "iteration s":
        return published / predicted - 1
    return predicted / published - 1


def main() -> None:
    rows = []
    for run in load_runs():
        metric, published, predicted, est = compare(run)
        error = throughput_error(metric, published, predicted)
        rows.append((run["id"], metric, published, predicted, error, est))
    print(f"{'run':40s} {'metric':>12s} {'published':>10s} {'predicted':>10s} {'error':>7s} "
          f"{'fits':>5s} {'bubble%':>8s} {'tp%':>5s} {'dp%':>5s}")
    for rid, metric, pub, pred, err, est in rows:
        bd = est.breakdown
        print(f"{rid:40s} {metric:>12s} {pub:10.2f} {pred:10.2f} {100 * err:+6.1f}% "
              f"{'yes' if est.fits else 'NO':>5s} {100 * bd['bubble'] / est.step_time:8.1f} "
              f"{100 * bd['tp_comm'] / est.step_time:5.1f} "
              f"{100 * bd['dp_comm'] / est.step_time:5.1f}")
    mape = statistics.mean(abs(r[4]) for r in rows)
    print(f"mean absolute percentage error: {100 * mape:.1f}% over {len(rows)} runs; "
          f"worst {100 * max(abs(r[4]) for r in rows):.1f}%")


if __name__ == "__main__":
    main()
