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
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_checkpoint_moves_from_tp2dp2_to_pp2dp2(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    """GPT-2's fused QKV is split by heads under tp (each rank holds a block of each of q, k
    and v, weights and momentum): its checkpoint still holds the full tensors' values."""
    graph = graph_of(name)
    first = make_plan(graph, BATCH, tp=2, dp=2)
    run_ranks(4, train_with_checkpoints, name, first, graph, 2, str(tmp_path))
    second = make_plan(graph, BATCH, pp=2, dp=2)
    resumed = run_ranks(4, train_with_checkpoints, name, second, graph, 3, str(tmp_path))
    ref = reference(name, BATCH, 3, momentum=0.9)
    assert compare(resumed, ([ref[0][2]], ref[1])) <= 1e-5


def _load_into(rank: int, name: str, plan, graph, path: str) -> str:  # type: ignore[no-untyped-def]
    """Try to load ``path`` into model ``name`` under ``plan``; the error message, if any."""
    import torch

    import autopar
    from autopar.executor import CheckpointError, checkpoint
    from tests.executor_util import build

    pm = autopar.parallelize(build(name), plan, graph=graph)
    opt = pm.build_optimizer(torch.optim.SGD, lr=0.1, momentum=0.9)
    try:
        checkpoint.load(pm, opt, path)
    except CheckpointError as exc:
        return str(exc)
    return ""


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    llama = graph_of("llama")
    run_ranks(2, train_with_checkpoints, "llama", make_plan(llama, BATCH, dp=2), llama, 1,
              str(tmp_path))
    gpt2 = graph_of("gpt2")
    errors = run_ranks(2, _load_into, "gpt2", make_plan(gpt2, BATCH, dp=2), gpt2,
                       str(tmp_path / "step-1"))
    assert all("does not fit this model" in e for e in errors), errors
    missing = run_ranks(2, _load_into, "gpt2", make_plan(gpt2, BATCH, dp=2), gpt2,
                        str(tmp_path / "nowhere"))
    assert all("no complete checkpoint" in e for e in missing), missing
