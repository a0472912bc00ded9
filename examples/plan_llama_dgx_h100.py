"""Plan Llama-3-8B (its Hugging Face config.json) for DGX H100 nodes and print the summary.

The model is built on the meta device and traced with fake tensors: nothing is allocated.
Needs transformers (``pip install 'autopar[hf]'``). Run from anywhere::

    python examples/plan_llama_dgx_h100.py [NODES] [TIME_LIMIT_S]

It writes ``llama-3-8b-plan.json`` and ``llama-3-8b-report.html`` in the current directory;
``autopar show`` and ``autopar report`` do the same from the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import autopar
from autopar.cli_show import summary
from autopar.report_html import render_report

CONFIG = Path(__file__).parent / "configs" / "llama-3-8b.json"


def main(nodes: int = 2, time_limit_s: float = 10.0, seq_len: int = 2048) -> autopar.Plan:
    config = AutoConfig.from_pretrained(CONFIG)
    config.use_cache = False  # training keeps no KV cache
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        ids = torch.zeros(1, seq_len, dtype=torch.long)
    graph = autopar.trace(model, (ids,), {"labels": ids})

    cluster = autopar.Cluster.from_profile("dgx-h100", nodes=nodes)
    plan = autopar.plan(graph, cluster, global_batch_size=64 * nodes,
                        constraints={"max_tp": 8, "memory_headroom": 0.1},
                        time_limit_s=time_limit_s, progress=print)
    plan.save("llama-3-8b-plan.json")
    Path("llama-3-8b-report.html").write_text(render_report(plan))
    print(summary(plan))
    return plan


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 2, float(args[1]) if len(args) > 1 else 10.0)
