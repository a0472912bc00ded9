"""Checkpoints: a killed job resumes to the same weights; a checkpoint moves between plans."""

from __future__ import annotations

import pytest

from tests.executor_util import (
    compare,
    graph_of,
    make_plan,
    reference,
    run_ranks,
    train_with_checkpoints,
)

BATCH = 8


@pytest.mark.slow
def test_killed_rank_resumes_to_the_same_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph = graph_of("llama")
    plan = make_plan(graph, BATCH, tp=2, dp=2)
    with pytest.raises(RuntimeError):
        run_ranks(4, train_with_checkpoints, "llama", plan, graph, 3, str(tmp_path), 2)
    assert (tmp_path / "step-2" / "COMPLETE").exists()
    assert not (tmp_path / "step-3").exists()
    resumed = run_ranks(4, train_with_checkpoints, "llama", plan, graph, 3, str(tmp_path))
    ref = reference("llama", BATCH, 3, momentum=0.9)
    assert compare(resumed, ([ref[0][2]], ref[1])) <= 1e-5


@pytest.mark.slow
def test_checkpoint_moves_from_tp2dp2_to_pp2dp2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    graph = graph_of("llama")
    first = make_plan(graph, BATCH, tp=2, dp=2)
    run_ranks(4, train_with_checkpoints, "llama", first, graph, 2, str(tmp_path))
    second = make_plan(graph, BATCH, pp=2, dp=2)
    resumed = run_ranks(4, train_with_checkpoints, "llama", second, graph, 3, str(tmp_path))
    ref = reference("llama", BATCH, 3, momentum=0.9)
    assert compare(resumed, ([ref[0][2]], ref[1])) <= 1e-5
