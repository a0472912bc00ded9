"""What if: compare hand-picked parallel configurations of one model on one cluster.

Each configuration is costed by ``autopar.estimate`` (the same cost model the planner uses),
and the table shows step time, its breakdown, throughput, MFU and memory side by side. The
command-line equivalent::

    autopar compare --model examples/configs/gpt2.json --cluster dgx-a100 --global-batch 32 \\
        --config dp=8 --config tp=2 --config pp=2,mb=2 --config tp=2,pp=2,sp,zero=1

Run from the repository root: ``python examples/what_if.py``.
"""

from __future__ import annotations

from pathlib import Path

import autopar
from autopar.cli_show import compare_table
from autopar.spec import load_spec

GPT2 = Path(__file__).parent / "configs" / "gpt2.json"  # GPT-2 small, 124M parameters

CONFIGS = {
    "pure data parallel": autopar.ParallelConfig(dp=8),
    "tp=2": autopar.ParallelConfig(dp=4, tp=2),
    "2 pipeline stages": autopar.ParallelConfig(dp=4, pp=2, micro_batch_size=2),
    "tp=2 pp=2 sp ZeRO-1": autopar.ParallelConfig(dp=2, tp=2, pp=2, sequence_parallel=True,
                                                  zero_stage=1, micro_batch_size=2),
    "ZeRO-3, full recompute": autopar.ParallelConfig(dp=8, zero_stage=3, recompute="full"),
}


def main() -> list[tuple[str, autopar.ParallelConfig, autopar.Estimate]]:
    loaded = load_spec(str(GPT2), seq_len=1024)  # built on the meta device: nothing allocated
    graph = autopar.trace(loaded.model, loaded.example_inputs, loaded.example_kwargs)
    cluster = autopar.Cluster.from_profile("dgx-a100", nodes=1)
    rows = [(name, config, autopar.estimate(graph, cluster, config, global_batch_size=32))
            for name, config in CONFIGS.items()]
    print(compare_table(rows))
    return rows


if __name__ == "__main__":
    main()
