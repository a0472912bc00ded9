"""Trace Llama-3-8B from its config.json on the meta device and print its per-layer costs.

Nothing is allocated: the model lives on ``meta`` and autopar traces one training step with
fake tensors, so this runs in seconds on a laptop. Needs transformers
(``pip install 'autopar[hf]'``). Run from the repository root::

    python examples/inspect_llama.py [SEQ_LEN]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import autopar

CONFIG = Path(__file__).parent / "configs" / "llama-3-8b.json"


def main(seq_len: int = 2048, batch_size: int = 1) -> None:
    config = AutoConfig.from_pretrained(CONFIG)
    config.use_cache = False  # training keeps no KV cache
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        input_ids = torch.zeros(batch_size, seq_len, dtype=torch.long)

    # labels=input_ids makes the traced step include the loss, as in training.
    graph = autopar.trace(model, input_ids, {"labels": input_ids})

    print(f"{graph}, sequence length {seq_len}; figures per sample (forward + backward)")
    for layer in graph.layers:
        gflop = (layer.fwd_flops + layer.bwd_flops) / 1e9
        print(f"{layer.index:3d}  {layer.name:<20}  {layer.params / 1e6:8.1f}M params  "
              f"{gflop:9.1f} GFLOP  {layer.activation_bytes / 1e6:8.1f} MB saved")
    total = (graph.fwd_flops + graph.bwd_flops) / 1e12
    print(f"total: {graph.total_params / 1e9:.2f}B params, {total:.1f} TFLOP per sample, "
          f"{graph.activation_bytes / 1e9:.1f} GB of activations per sample "
          f"(capture: {graph.capture})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2048)
