"""The plan against the published (expert) configuration of each calibration run.

For every run in shared/calibration, plan the same model on the same cluster for the same
global batch, and compare predicted step times: the plan must be no slower than the experts'
configuration under the same cost model.

    python benchmarks/vs_experts.py [--time-limit 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import autopar
from autopar.cluster import Cluster
from autopar.estimate import estimate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--only", help="substring of run ids to include")
    args = parser.parse_args()
    print(f"{'run':34} {'expert s':>9} {'plan s':>9} {'ratio':>6} {'optimal':>8} {'gap':>6} "
          f"{'plan s (wall)':>13}  plan")
    worse = 0
    for run in accuracy.load_runs():
        if args.only and args.only not in run["id"]:
            continue
        m = run["model"]
        graph = accuracy.gpt_graph(m["layers"], m["hidden"], m["heads"], m["ffn_hidden"],
                                   m["vocab"], m["seq_len"])
        config, global_batch = accuracy.published_config(run)
        cluster = Cluster.from_profile("dgx-a100", nodes=run["hardware"]["num_gpus"] // 8)
        expert = estimate(graph, cluster, config, global_batch_size=global_batch)
        start = time.perf_counter()
        plan = autopar.plan(graph, cluster, global_batch_size=global_batch,
                            time_limit_s=args.time_limit)
        wall = time.perf_counter() - start
        c = plan.config
        ratio = plan.estimate.step_time / expert.step_time
        worse += ratio > 1 + 1e-9
        print(f"{run['id'][:34]:34} {expert.step_time:9.3f} {plan.estimate.step_time:9.3f} "
              f"{ratio:6.3f} {str(plan.solver.optimal):>8} {plan.solver.gap:6.1%} {wall:13.1f}  "
              f"dp={c.dp} tp={c.tp} pp={c.pp} cp={c.cp} z={c.zero_stage} {c.schedule} "
              f"v={c.virtual_stages} mbs={c.micro_batch_size}")
    print(f"plans slower than the experts' configuration: {worse}")


if __name__ == "__main__":
    main()
