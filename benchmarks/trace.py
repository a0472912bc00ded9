"""Trace time and peak memory for a Llama-3-70B-shaped model, at 80 layers and at 8 layers.

Each measurement runs in a fresh process (so peak RSS is that trace's own), builds the model on
the meta device, then times ``autopar.trace`` alone: *cold* is the first trace in the process
(torch.export warms up its caches then), *warm* a second trace of the same model. Prints medians
of --repeats runs.

    python benchmarks/trace.py            # 5 runs each
    python benchmarks/trace.py --repeats 3

Targets (issue #2, on the 2-core CI machine): 70B traced in <= 3 s (median of 5), peak RSS
<= 2 GB, 80-layer time <= 1.5 x the 8-layer time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

LLAMA3_70B = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                  num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                  rope_theta=500000.0, use_cache=False)
SEQ_LEN = 4096

_CHILD = """
import json, resource, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
import autopar
layers, shape, seq = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
with torch.device("meta"):
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **shape))
built = time.perf_counter()
ids = torch.zeros(1, seq, dtype=torch.long)
graph = autopar.trace(model, (ids,), {"labels": ids})
done = time.perf_counter()
autopar.trace(model, (ids,), {"labels": ids})
again = time.perf_counter()
print(json.dumps({"build_s": built - start, "trace_s": done - built, "warm_s": again - done,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "params": graph.total_params, "ops": graph.graph.number_of_nodes(),
                  "capture": graph.capture}))
"""


def measure(layers: int) -> dict[str, float]:
    """One trace in a fresh interpreter; its timings and peak resident memory."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(layers), json.dumps(LLAMA3_70B), str(SEQ_LEN)],
        check=True, capture_output=True, text=True, cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = {}
    for layers in (8, 80):
        runs = [measure(layers) for _ in range(args.repeats)]
        rows[layers] = {
            "trace_s": statistics.median(r["trace_s"] for r in runs),
            "warm_s": statistics.median(r["warm_s"] for r in runs),
            "build_s": statistics.median(r["build_s"] for r in runs),
            "rss_mb": max(r["rss_mb"] for r in runs),
            "params": runs[0]["params"], "ops": runs[0]["ops"], "capture": runs[0]["capture"],
        }
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"python {platform.python_version()}; median of {args.repeats} runs, "
          f"Llama-3-70B shape, batch 1 x seq {SEQ_LEN}")
    print(f"{'layers':>6} {'params':>16} {'ops':>7} {'capture':>8} {'build s':>8} "
          f"{'cold s':>7} {'warm s':>7} {'peak RSS MB':>12}")
    for layers, row in rows.items():
        print(f"{layers:>6} {row['params']:>16,} {row['ops']:>7} {row['capture']:>8} "
              f"{row['build_s']:>8.2f} {row['trace_s']:>7.2f} {row['warm_s']:>7.2f} "
              f"{row['rss_mb']:>12.0f}")
    ratio = rows[80]["trace_s"] / rows[8]["trace_s"]
    print(f"80-layer / 8-layer cold trace time: {ratio:.2f}  (target <= 1.5); warm: "
          f"{rows[80]['warm_s'] / rows[8]['warm_s']:.2f}")
    print(f"70B trace: {rows[80]['trace_s']:.2f} s (target <= 3 s), "
          f"peak RSS {rows[80]['rss_mb']:.0f} MB (target <= 2048 MB)")


if __name__ == "__main__":
    main()
