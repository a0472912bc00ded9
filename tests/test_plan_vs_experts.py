"""The plan is never slower than the experts' published configuration, under the same cost
model: every DGX A100 run in shared/calibration and every NVIDIA H100 run in
benchmarks/data/published_h100.json (benchmarks/vs_experts.py prints the table).

Each plan is searched with a 2-second limit (beyond the plain configurations the search always
costs first, see ``search._first_plans``): what it must beat is a configuration a person chose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import autopar

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import accuracy  # noqa: E402
import external  # noqa: E402

A100 = accuracy.load_runs()
H100 = external.load_runs()


def _check(graph: autopar.ModelGraph, cluster: autopar.Cluster,
           expert: autopar.ParallelConfig, global_batch: int) -> None:
    ours = autopar.plan(graph, cluster, global_batch_size=global_batch, time_limit_s=2)
    theirs = autopar.estimate(graph, cluster, expert, global_batch_size=global_batch)
    assert ours.estimate.fits
    assert ours.estimate.step_time <= theirs.step_time * (1 + 1e-9), (
        f"plan {ours.config} takes {ours.estimate.step_time:.3f} s, the experts' "
        f"{expert} {theirs.step_time:.3f} s")


@pytest.mark.slow
@pytest.mark.parametrize("run", A100, ids=[r["id"] for r in A100])
def test_plan_is_no_slower_than_a_published_a100_configuration(run: dict) -> None:
    m = run["model"]
    graph = accuracy.gpt_graph(m["layers"], m["hidden"], m["heads"], m["ffn_hidden"],
                               m["vocab"], m["seq_len"])
    config, global_batch = accuracy.published_config(run)
    cluster = autopar.Cluster.from_profile("dgx-a100", nodes=run["hardware"]["num_gpus"] // 8)
    _check(graph, cluster, config, global_batch)


@pytest.mark.slow
@pytest.mark.parametrize("run", H100, ids=[r["id"] for r in H100])
def test_plan_is_no_slower_than_a_published_h100_configuration(run: dict) -> None:
    cluster = autopar.Cluster.from_profile("dgx-h100", nodes=run["hardware"]["num_gpus"] // 8)
    _check(external.graph_of(run), cluster, external.published_config(run),
           run["batch"]["global_batch_seqs"])
