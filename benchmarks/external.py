"""Predicted vs published throughput on an external set: NVIDIA's BF16 runs on H100.

The runs in benchmarks/data/published_h100.json are dense-model BF16 pre-training results that
NVIDIA publishes for H100 (8 GPUs per node) in the DGX Cloud Benchmarking recipes (NeMo /
NeMo Megatron): Llama 3.1 8B, 70B, 405B and GPT-3 175B. Nothing in autopar was fitted to
them; the A100 calibration (benchmarks/accuracy.py) is the only tuning set.

Each model is built on the meta device in bf16 from its published shape (LlamaForCausalLM from
a LlamaConfig; GPT-3 as a GPT2LMHeadModel with learned positions, GELU MLP and tied
embeddings, traced with the default sdpa attention since these are flash/fused-attention
runs), traced once at batch 1 and the run's sequence length (cached by shape), and estimated on
the bundled ``dgx-h100`` profile with ``nodes = num_gpus // 8``. The graphs are costed with
the default fusion model (``ModelGraph.kernels = "fused"``, autopar/fusion.py): NeMo runs
Transformer Engine's fused norms, SwiGLU, rope and GQA attention, not Hugging Face's eager ops.

GPT-3 is traced with attention dropout 0 by default (hidden/embedding dropout stay at 0.1, as
in the NeMo run). The run does use attention dropout 0.1, inside a fused attention kernel.
Traced on the CPU, sdpa with dropout takes PyTorch's math path instead. The cost model does not
count the scores that path saves for a fused attention op, but its backward still moves them,
which makes the step about 10% slower. ``--attn-dropout 0.1`` traces that literal
configuration (measured: -5.0% / -4.3% instead of +6.1% / +6.9%; both fit).

Mapping of the published configuration to ``ParallelConfig`` (stated assumptions):

- ``dp = num_gpus // (tp * pp * cp)``; ``sequence_parallel = tp > 1`` (NeMo's default with
  tensor parallelism; the GPT-3 yaml sets it explicitly).
- ``VP > 1`` -> ``schedule="interleaved"`` with ``virtual_stages = VP``; otherwise plain 1F1B.
- ``FSDP`` -> ``zero_stage=3``; otherwise ``zero_stage=1``: Megatron's distributed optimizer
  (``distributed_fused_adam`` in these recipes) shards optimizer state like ZeRO-1.
- ``micro_batch_size = MBS``; ``recompute="none"`` (the tables state none; the GPT-3 yaml has
  no activation checkpointing); precision bf16, AdamW.

Compared quantities:

- tokens/s per GPU, convention-free: predicted ``est.tokens_per_s / num_gpus`` against the
  published total tokens/s divided by the number of GPUs;
- model TFLOP/s per GPU in the source's convention: the README's stated model FLOPs per
  sequence x GBS / predicted step time / GPUs, against published MFU x 989 TFLOP/s (the
  README's BF16 peak). Both ratios equal published / predicted step time.

A configuration autopar refuses (ConfigError) is printed in the table instead of failing.

    python benchmarks/external.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import cache
from pathlib import Path
from typing import Any

import torch

import autopar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "published_h100.json"


def load_runs(path: Path = DATA) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["runs"])


@cache
def llama_graph(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
                seq: int) -> autopar.ModelGraph:
    """The traced graph of a Llama of this shape in bf16 (built on meta, sdpa attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         vocab_size=vocab, max_position_embeddings=seq,
                         tie_word_embeddings=False, use_cache=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    ids = torch.zeros(1, seq, dtype=torch.long)
    return autopar.trace(model, (ids,), {"labels": ids})


@cache
def gpt_graph(layers: int, hidden: int, heads: int, ffn: int, vocab: int, seq: int,
              attn_dropout: float = 0.0) -> autopar.ModelGraph:
    """As accuracy.gpt_graph, but with the default (sdpa) attention, for fused-attention runs,
    and attention dropout ``attn_dropout`` (see the module docstring)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=ffn,
                        vocab_size=vocab, n_positions=seq, use_cache=False,
                        activation_function="gelu", attn_pdrop=attn_dropout)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    ids = torch.zeros(1, seq, dtype=torch.long)
    return autopar.trace(model, (ids,), {"labels": ids})


def graph_of(run: dict[str, Any], attn_dropout: float = 0.0) -> autopar.ModelGraph:
    m = run["model"]
    if m["hf_architecture"] == "LlamaForCausalLM":
        return llama_graph(m["layers"], m["hidden"], m["heads"], m["kv_heads"],
                           m["ffn_hidden"], m["vocab"], m["seq_len"])
    if m["hf_architecture"] == "GPT2LMHeadModel":
        return gpt_graph(m["layers"], m["hidden"], m["heads"], m["ffn_hidden"], m["vocab"],
                         m["seq_len"], attn_dropout)
    raise ValueError(f"{run['id']}: no builder for {m['hf_architecture']}")


def published_config(run: dict[str, Any]) -> autopar.ParallelConfig:
    """The run's ParallelConfig under the mapping in the module docstring."""
    p, gpus = run["parallel"], run["hardware"]["num_gpus"]
    tp, pp, cp, vp = p["tp"], p["pp"], p.get("cp") or 1, p.get("vp")
    return autopar.ParallelConfig(
        tp=tp, pp=pp, cp=cp, dp=gpus // (tp * pp * cp), sequence_parallel=tp > 1,
        schedule="interleaved" if vp and vp > 1 else "1f1b", virtual_stages=vp or 1,
        micro_batch_size=run["batch"]["micro_batch"] or 1,
        zero_stage=3 if p.get("fsdp") else 1)


def published_per_gpu(run: dict[str, Any]) -> tuple[float, float]:
    """(tokens/s per GPU, model TFLOP/s per GPU) as published, or derived from the published
    total tokens/s and MFU where the table gives only those."""
    pub, gpus = run["published"], run["hardware"]["num_gpus"]
    tokens = pub.get("tokens_per_s_per_gpu") or pub["tokens_per_s"] / gpus
    tflops = pub.get("model_tflops_per_gpu") or pub["mfu_pct"] / 100 * pub["peak_tflops"]
    return tokens, tflops


def source_flops(run: dict[str, Any]) -> float:
    """Model FLOPs per iteration in the source's convention (its stated figure per sequence,
    else the Megatron MFU formula of the calibration README)."""
    gbs = run["batch"]["global_batch_seqs"]
    per_seq = run["published"].get("model_flops_per_seq")
    if per_seq:
        return per_seq * gbs
    return accuracy.convention_flops(run, "megatron_mfu", gbs)


def compare(run: dict[str, Any], attn_dropout: float = 0.0) -> dict[str, Any]:
    """Published and predicted figures for one run; ``error`` is set if autopar refuses it."""
    gpus = run["hardware"]["num_gpus"]
    pub_tokens, pub_tflops = published_per_gpu(run)
    row: dict[str, Any] = {"run": run, "pub_tokens": pub_tokens, "pub_tflops": pub_tflops}
    try:
        config = published_config(run)
        cluster = autopar.Cluster.from_profile("dgx-h100", nodes=gpus // 8)
        est = autopar.estimate(graph_of(run, attn_dropout), cluster, config,
                               global_batch_size=run["batch"]["global_batch_seqs"])
    except autopar.ConfigError as exc:
        row["error"] = str(exc)
        return row
    row.update(config=config, est=est, pred_tokens=est.tokens_per_s / gpus,
               pred_tflops=source_flops(run) / est.step_time / gpus / 1e12)
    row["err"] = accuracy.throughput_error("tokens/s/GPU", pub_tokens, row["pred_tokens"])
    return row


def describe(config: autopar.ParallelConfig) -> str:
    vp = f"v{config.virtual_stages}" if config.schedule == "interleaved" else ""
    z = f"z{config.zero_stage}"
    return f"t{config.tp}p{config.pp}{vp}c{config.cp}d{config.dp}m{config.micro_batch_size}{z}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attn-dropout", type=float, default=0.0,
                        help="attention dropout of the traced GPT-3 (default 0: fused kernel)")
    args = parser.parse_args()
    rows = [compare(run, args.attn_dropout) for run in load_runs()]
    print(f"{'run':30s} {'GPUs':>5s} {'config':>16s} {'tok/s/GPU':>9s} {'pred':>7s} "
          f"{'error':>7s} {'TF/GPU':>6s} {'pred':>6s} {'fits':>4s} {'GiB':>5s} "
          f"{'bubble%':>7s} {'tp%':>5s} {'dp%':>5s}")
    for r in rows:
        run = r["run"]
        head = (f"{run['id']:30s} {run['hardware']['num_gpus']:5d} ")
        if "error" in r:
            print(f"{head}{'':>16s} {r['pub_tokens']:9.0f}  ConfigError: {r['error']}")
            continue
        est = r["est"]
        bd, step = est.breakdown, est.step_time
        print(f"{head}{describe(r['config']):>16s} {r['pub_tokens']:9.0f} "
              f"{r['pred_tokens']:7.0f} {100 * r['err']:+6.1f}% {r['pub_tflops']:6.0f} "
              f"{r['pred_tflops']:6.0f} {'yes' if est.fits else 'NO':>4s} "
              f"{est.peak_memory / 2**30:5.1f} {100 * bd['bubble'] / step:7.1f} "
              f"{100 * bd['tp_comm'] / step:5.1f} {100 * bd['dp_comm'] / step:5.1f}")
    errors = [abs(r["err"]) for r in rows if "err" in r]
    refused = len(rows) - len(errors)
    if errors:
        print(f"mean absolute percentage error (tokens/s/GPU): {100 * statistics.mean(errors):.1f}%"
              f" over {len(errors)} runs; worst {100 * max(errors):.1f}%"
              + (f"; {refused} refused" if refused else ""))
    else:
        print(f"no run could be estimated ({refused} refused)")
    print("published TF/GPU = published MFU x 989 TFLOP/s; predicted TF/GPU = the README's "
          "model FLOPs / predicted step time (same convention)")


if __name__ == "__main__":
    main()
