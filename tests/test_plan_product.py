"""The plan as a product: layout (mesh, stages, sharding), schema, validation of hand edits,
exact round trips, and the timeline the report draws."""

from __future__ import annotations

import copy
import itertools
import json
from functools import cache
from pathlib import Path

import jsonschema
import pytest
from autopar.cost_models.pipeline import StageCost, simulate, timeline

import autopar
from autopar.cluster import Cluster
from autopar.plan import Plan, PlanError
from autopar.report_html import plan_timeline
from tests.models import small_gpt_graph


@cache
def tp_pp_plan() -> Plan:
    """tp=2 x pp=2 x dp=2 on one 8-GPU node, with ZeRO-3: every part of the layout shows."""
    return autopar.plan(small_gpt_graph(), Cluster.from_profile("dgx-a100", nodes=1),
                        global_batch_size=16,
                        constraints={"tp": 2, "pp": 2, "cp": 1, "zero_stage": 3,
                                     "schedule": "1f1b"})


@cache
def plans() -> list[Plan]:
    mixed = Cluster(name="mixed", groups=[Cluster.from_profile("dgx-a100", 1).groups[0],
                                          Cluster.from_profile("dgx-h100", 1).groups[0]])
    return [
        tp_pp_plan(),
        autopar.plan(small_gpt_graph(), Cluster.from_profile("dgx-h100", nodes=1),
                     global_batch_size=32, time_limit_s=3,
                     constraints={"pp": 2, "schedule": "interleaved", "virtual_stages": 2,
                                  "tp": 1, "cp": 1, "zero_stage": 1, "micro_batch_size": 2}),
        autopar.plan(small_gpt_graph(6), mixed, global_batch_size=32,
                     constraints={"pp": 2, "tp": 1, "cp": 1, "schedule": "1f1b"}),
    ]


def test_mesh_places_every_rank_in_megatron_order() -> None:
    plan = tp_pp_plan()
    c = plan.config
    assert plan.mesh.dims == ("pp", "dp", "cp", "tp")
    assert plan.mesh.shape == (c.pp, c.dp, c.cp, c.tp)
    assert [r.rank for r in plan.mesh.ranks] == list(range(8))
    for r in plan.mesh.ranks:
        assert r.rank == ((r.pp * c.dp + r.dp) * c.cp + r.cp) * c.tp + r.tp
        assert (r.node, r.local_device) == (0, r.rank)
    # A stage's ranks are a contiguous block, as estimate.stage_groups assumes.
    for stage in plan.stages:
        assert {plan.mesh.ranks[r].pp for r in stage.ranks} == {stage.stage}


def test_stages_hold_every_layer_once_with_estimate_figures() -> None:
    graph = small_gpt_graph()
    for plan in plans():
        layers = [name for st in plan.stages for name in st.layers]
        if plan.config.virtual_stages == 1:
            assert layers == [layer.name for layer in plan_graph(plan).layers]
        assert sorted(layers) == sorted(plan.recompute)
        for st in plan.stages:
            assert sum(st.memory.values()) == pytest.approx(plan.estimate.stage_memory[st.stage],
                                                            rel=1e-12)
            assert st.time_s == plan.estimate.stage_times[st.stage]
    assert plans()[0].stages[0].layers[0] == graph.layers[0].name


def plan_graph(plan: Plan) -> autopar.ModelGraph:
    return small_gpt_graph(int(plan.model["layers"]) - 4)  # type: ignore[call-overload]


def test_heterogeneous_plan_names_each_stage_device() -> None:
    plan = plans()[2]
    assert [st.device for st in plan.stages] == ["A100-SXM4-80GB", "H100-SXM5-80GB"]
    assert [st.node_group for st in plan.stages] == [g.name for g in plan.cluster.groups]
    assert {r.node for r in plan.mesh.ranks} == {0, 1}


def test_sharding_marks_column_row_and_vocabulary_parallel() -> None:
    plan = tp_pp_plan()
    by_module = {m.module: m for m in plan.sharding}
    # GPT-2's Conv1D stores (in, out): column-parallel shards dim 1, row-parallel dim 0.
    c_attn = by_module["transformer.h.0.attn.c_attn"]
    assert c_attn.style == "colwise" and c_attn.layer == "transformer.h.0"
    assert c_attn.params["weight"].placements["tp"] == "Shard(1)"
    assert c_attn.params["bias"].placements["tp"] == "Shard(0)"
    c_proj = by_module["transformer.h.0.attn.c_proj"]
    assert c_proj.style == "rowwise"
    assert c_proj.params["weight"].placements["tp"] == "Shard(0)"
    assert c_proj.params["bias"].placements["tp"] == "Replicate()"
    wte = by_module["transformer.wte"]
    assert wte.style == "vocab_embedding"
    assert wte.params["weight"].placements == {"dp": "Shard(0)", "cp": "Replicate()",
                                               "tp": "Shard(0)"}  # FSDP over dp, vocab on tp
    assert by_module["lm_head"].style == "vocab_head" and "tied" in by_module["lm_head"].note
    assert by_module["transformer.h.0.ln_1"].style == "replicate"
    assert by_module["transformer.h.0.attn"].style == "attention"
    named = {f"{m.module}.{p}" for m in plan.sharding for p in m.params}
    assert named == set(small_gpt_graph().param_shapes)
    assert plan.data_parallel.strategy == "fsdp"
    assert plan.micro_batching.micro_batches * plan.micro_batching.micro_batch_size * \
        plan.config.dp == 16


def test_schema_validates_every_plan() -> None:
    schema = Plan.model_json_schema()
    for plan in plans():
        jsonschema.validate(json.loads(plan.to_json()), schema)


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    for i, plan in enumerate(plans()):
        path = tmp_path / f"plan{i}.json"
        plan.save(path)
        again = Plan.load(path)
        assert again.to_json() == plan.to_json() == path.read_text()
        assert again == plan.model_copy(update={"solver": again.solver})


def _edit(data: dict, what: str) -> dict:
    data = copy.deepcopy(data)
    if what == "degrees":
        data["config"]["tp"] = 4
    elif what == "layer_twice":
        last = data["stages"][0]["chunks"][0]["layers"][-1]
        data["stages"][1]["chunks"][0]["layers"].insert(0, last)
    elif what == "unknown":
        data["stages"][0]["colour"] = "blue"
    elif what == "version":
        data["schema_version"] = 1
    elif what == "mesh":
        data["mesh"]["ranks"][3]["tp"] = 0
    return data


@pytest.mark.parametrize(("what", "field"), [
    ("degrees", "config"),
    ("layer_twice", "stages"),
    ("unknown", "stages.0.colour"),
    ("version", "schema_version"),
    ("mesh", "mesh.ranks"),
])
def test_invalid_hand_edits_are_refused_naming_the_field(tmp_path: Path, what: str,
                                                         field: str) -> None:
    data = _edit(json.loads(tp_pp_plan().to_json()), what)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as err:
        Plan.load(path)
    assert field in str(err.value)
    with pytest.raises(ValueError, match=field.split(".")[0]):
        Plan.model_validate(data)


def test_not_json_and_missing_files_are_plan_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not JSON"):
        Plan.load(bad)
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "none.json")


def test_timeline_is_the_simulated_schedule() -> None:
    stages = [StageCost(1.0, 2.0, send=0.1), StageCost(1.5, 2.5, send=0.1),
              StageCost(1.0, 2.0, send=0.1), StageCost(1.0, 2.0)]
    for schedule in ("gpipe", "1f1b", "zero_bubble"):
        ops = timeline(stages, 6, schedule)  # type: ignore[arg-type]
        assert max(op.end for op in ops) == simulate(stages, 6, schedule).step_time  # type: ignore[arg-type]
        for device in range(4):
            mine = [op for op in ops if op.device == device]
            assert sorted(op.micro_batch for op in mine if op.kind == "F") == list(range(6))
            assert all(a.end <= b.start + 1e-12 for a, b in itertools.pairwise(mine))
    # The plan's timeline ends where the estimate's pipeline part does.
    for plan in plans():
        tl = plan_timeline(plan)
        e = plan.estimate
        assert tl.end == pytest.approx(e.step_time, rel=1e-9)
        assert tl.pipeline_end == pytest.approx(
            e.step_time - e.breakdown["dp_comm"] - e.breakdown["optimizer"], rel=1e-9)
