"""``autopar run``: the torchrun command lines of a plan."""

from __future__ import annotations

import pytest

import autopar
from autopar.cli import main
from autopar.cli_run import torchrun_commands
from tests.executor_util import graph_of, make_plan


def test_one_node_plan_runs_torchrun_standalone(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "plan.json"
    make_plan(graph_of("mlp"), 8, dp=2, tp=2).save(path)
    assert main(["run", str(path), "--dry-run", "--", "train.py", "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert f"AUTOPAR_PLAN={path} torchrun --standalone --nproc-per-node=4 train.py --lr 0.1" \
        in out


def test_multi_node_plan_prints_each_nodes_command() -> None:
    plan = make_plan(graph_of("mlp"), 8, dp=4)
    if isinstance(plan.cluster, str):
        pytest.skip("plans without their cluster's node layout run on one node")
    two_nodes = autopar.Cluster.from_profile("cpu", devices_per_node=2, nodes=2)
    plan = plan.model_copy(update={"cluster": two_nodes})
    commands = torchrun_commands("p.json", plan, ["train.py"], "10.0.0.1", 29500)
    assert [c[3] for c in commands] == ["--node-rank=0", "--node-rank=1"]
    assert commands[1][:4] == ["torchrun", "--nnodes=2", "--nproc-per-node=2", "--node-rank=1"]


def test_missing_script_is_one_line_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "plan.json"
    make_plan(graph_of("mlp"), 8, dp=2).save(path)
    assert main(["run", str(path)]) == 2
    assert "no training script given" in capsys.readouterr().err
