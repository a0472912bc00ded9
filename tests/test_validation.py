"""``autopar validate``: a plan's layers measured on this CPU against their predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autopar
from autopar.cli import main
from autopar.cluster import DeviceProfile
from autopar.plan import Plan
from autopar.validation import ValidationError, ValidationReport, updated_profile, validate
from autopar.validation.report import LayerRow, _fit_two

MODEL = str(Path(__file__).resolve().parent.parent / "examples" / "configs" / "tiny-llama.json")


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plan of a small Llama for 4 CPU devices with tensor and pipeline parallelism."""
    path = tmp_path_factory.mktemp("validate") / "plan.json"
    assert main(["plan", "--model", MODEL, "--seq-len", "64", "--cluster", "cpu", "--nodes", "1",
                 "--global-batch", "8", "--precision", "fp32", "--cp", "1", "--tp", "2",
                 "--pp", "2", "-q", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def report(plan_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("refit") / "refit.toml"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["validate", str(plan_file), "--repeats", "2", "-q", "--json",
                     "--update-profile", str(out)]) == 0
    data: dict[str, object] = json.loads(buffer.getvalue())
    data["refit_path"] = str(out)
    return data


def test_the_table_is_complete(plan_file: Path, report: dict[str, object]) -> None:
    """Every layer of every stage, in no, full and its planned recomputation; every stage."""
    plan = Plan.load(plan_file)
    result = ValidationReport.model_validate(
        {k: v for k, v in report["report"].items()  # type: ignore[union-attr]
         if k != "summary"})
    for stage in plan.stages:
        for name in stage.layers:
            rows = [r for r in result.layers if r.layer == name and r.stage == stage.stage]
            assert {"none", "full"} <= {r.mode for r in rows}, name
            assert sum(r.planned for r in rows) == 1, name
    for row in result.layers:
        assert row.measured_forward_s > 0 and row.measured_peak_bytes > 0, row
        assert row.predicted_forward_s > 0 and row.predicted_peak_bytes > 0, row
        assert row.time_error is not None and row.peak_error is not None
    assert [s.stage for s in result.stages] == [s.stage for s in plan.stages]
    assert all(s.measured_time_s > 0 and s.measured_peak_bytes > 0 for s in result.stages)
    summary = report["report"]["summary"]  # type: ignore[index]
    assert summary["time_error_mean_abs"] is not None


def test_memory_a_block_keeps_matches_the_eager_model(report: dict[str, object]) -> None:
    """Held activations of the decoder blocks, measured from the allocator, are what the
    eager cost model predicts, within 25%, with and without recomputation."""
    rows = [LayerRow.model_validate({k: v for k, v in r.items()
                                     if k not in ("time_error", "peak_error")})
            for r in report["report"]["layers"]]  # type: ignore[index]
    blocks = [r for r in rows if ".layers." in r.layer and r.mode in ("none", "full")]
    assert blocks
    for row in blocks:
        assert row.measured_saved_bytes == pytest.approx(row.predicted_saved_bytes, rel=0.25), row
    none = next(r for r in blocks if r.mode == "none")
    full = next(r for r in blocks if r.mode == "full" and r.layer == none.layer)
    assert full.measured_saved_bytes < none.measured_saved_bytes / 4


def test_update_profile_writes_a_profile_that_loads(report: dict[str, object]) -> None:
    refit = DeviceProfile.from_profile(str(report["refit_path"]))
    assert refit.name == "cpu"
    assert "after_update" in report
    assert any(key in refit.sources and "--update-profile" in refit.sources[key]
               for key in ("sustained_fraction", "memory_efficiency"))


def test_fit_recovers_known_scales() -> None:
    """Measured = 2 x arithmetic + 0.5 x memory: the fit finds both factors."""
    rows = [(a, m, 2 * a + 0.5 * m) for a, m in ((1.0, 0.1), (0.2, 1.0), (3.0, 3.0), (0.5, 2.0))]
    a, b = _fit_two(rows)
    assert a == pytest.approx(2.0) and b == pytest.approx(0.5)


def test_fit_of_proportional_parts_scales_both() -> None:
    """One distinct layer (its two parts proportional in every row), both over-predicted
    fourfold: both parts scale by a quarter. The fallback once fitted neither and returned a
    memory factor of 1e-3, which set memory efficiency to 1."""
    a, b = _fit_two([(2.0, 2.0, 1.0), (4.0, 4.0, 2.0)])
    assert a == pytest.approx(0.25) and b == pytest.approx(0.25)
    assert _fit_two([(3.0, 0.0, 12.0)]) == pytest.approx((4.0, 1.0))  # memory part unknown
    assert _fit_two([]) == (1.0, 1.0)


def test_refit_profile_predicts_what_was_measured() -> None:
    """A device four times slower at arithmetic than its profile says: after the refit the
    predictions of the same runs match them."""
    plan_device = DeviceProfile.from_profile("cpu")
    row = dict(stage=0, index=0, layer="x", mode="none", planned=True, measured_as="x",
               predicted_forward_s=1.0, predicted_backward_s=2.0, predicted_saved_bytes=1.0,
               measured_saved_bytes=1.0, predicted_peak_bytes=1.0, measured_peak_bytes=1.0,
               predicted_arithmetic_s=3.0, predicted_memory_s=0.0,
               measured_forward_s=4.0, measured_backward_s=8.0)
    rep = ValidationReport(device="cpu", profile="cpu", precision="fp32",
                           layers=[LayerRow(**row)], stages=[])  # type: ignore[arg-type]
    refit = updated_profile(rep, plan_device)
    assert refit.sustained_fraction == pytest.approx(0.2)  # 0.8 / 4


def test_cp_plans_and_unknown_models_are_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.models import hf_model

    model = hf_model("llama", layers=2, hidden=64)
    ids = torch.zeros(2, 32, dtype=torch.long, device="meta")
    plan = autopar.plan(model, autopar.Cluster.from_profile("cpu", devices_per_node=2),
                        example_inputs=(ids,), global_batch_size=4, precision="fp32",
                        constraints={"cp": 2})
    with pytest.raises(ValidationError, match="context parallelism"):
        validate(model, plan)
    plan.save(tmp_path / "api.json")  # made in Python: it does not say how to load its model
    assert main(["validate", str(tmp_path / "api.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model SPEC" in err


@pytest.mark.slow
def test_run_the_real_plan(plan_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--run: the plan on its 4 processes; every rank reports its step time and memory."""
    assert main(["validate", str(plan_file), "--run", "--steps", "1", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert sorted(r["rank"] for r in ran["ranks"]) == [0, 1, 2, 3]
    assert {r["stage"] for r in ran["ranks"]} == {0, 1}
    for r in ran["ranks"]:
        assert r["measured_step_s"] > 0 and r["measured_peak_bytes"] > 0
        assert r["time_error"] is not None and r["peak_error"] is not None


def test_a_model_fed_by_keywords_only() -> None:
    """Inputs all keywords (``input_ids=`` of a Hugging Face model): the micro-batch is found
    among them (it was looked for among the positional inputs only: StopIteration)."""
    from tests.models import hf_model

    model = hf_model("llama", layers=2, hidden=64)
    ids = torch.zeros(2, 32, dtype=torch.long, device="meta")
    plan = autopar.plan(model, autopar.Cluster.from_profile("cpu", devices_per_node=1),
                        example_inputs=(ids,), global_batch_size=2, precision="fp32")
    result = validate(model, plan, inputs=(), repeats=1, stages=False,
                      kwargs={"input_ids": torch.zeros(2, 32, dtype=torch.long)})
    assert result.layers and all(r.measured_forward_s > 0 for r in result.layers)
    with pytest.raises(ValidationError, match="no tensor with a batch dimension"):
        validate(model, plan, inputs=(), kwargs={})


class _PositionEmbedding(torch.nn.Module):
    """Token and position embeddings, positions read from a buffer (as BERT's are)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(50, 16)
        self.positions = torch.nn.Embedding(8, 16)
        self.register_buffer("position_ids", torch.arange(8), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.positions(self.position_ids[: ids.shape[1]])


class _PositionNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = _PositionEmbedding()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(2))
        self.head = torch.nn.Linear(16, 50)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_layer_buffers_hold_values_not_leftover_memory() -> None:
    """A layer's buffers are the model's (or zeros for a meta model), not whatever ``to_empty``
    left: leftover position ids indexed out of range."""
    from autopar.executor.layout import meta_copy
    from autopar.validation.local_layers import local_layer

    model = _PositionNet()
    ids = torch.zeros(2, 8, dtype=torch.long)
    plan = autopar.plan(model, autopar.Cluster.from_profile("cpu", devices_per_node=1),
                        example_inputs=(ids,), global_batch_size=2, precision="fp32")
    cpu = torch.device("cpu")
    real = local_layer(model, "embed", plan, cpu, torch.float32)
    assert torch.equal(real.position_ids, torch.arange(8))
    meta = local_layer(meta_copy(model), "embed", plan, cpu, torch.float32)
    assert torch.equal(meta.position_ids, torch.zeros(8, dtype=torch.long))
    result = validate(model, plan, inputs=(ids,), repeats=1, stages=False)
    assert {r.layer for r in result.layers} == {"embed", "blocks.0", "blocks.1", "head"}


def test_run_on_the_cpu_hides_gpus(plan_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--run --device cpu: the executor takes a GPU whenever one is visible, so the ranks are
    started with none visible (else all would share the first one)."""
    import subprocess

    from autopar.validation import distributed

    seen: dict[str, str] = {}

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs["env"])  # type: ignore[arg-type]
        return subprocess.CompletedProcess(command, 1, "", "RuntimeError: stopped here")

    monkeypatch.setattr(distributed.subprocess, "run", run)
    plan = Plan.load(plan_file)
    with pytest.raises(ValidationError, match="stopped here"):
        distributed.launch(str(plan_file), plan, {"spec": MODEL}, steps=1, device="cpu")
    assert seen["CUDA_VISIBLE_DEVICES"] == ""


def test_update_profile_into_a_missing_directory_is_refused_first(
        plan_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the layers are measured, not after."""
    out = tmp_path / "missing" / "refit.toml"
    assert main(["validate", str(plan_file), "-q", "--update-profile", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_gpt2_blocks_run_at_their_tensor_parallel_shard() -> None:
    """GPT-2's fused QKV ``Conv1D`` reshapes by ``nf`` and splits by ``split_size``: both must
    follow the local shard, or a tp plan's blocks cannot run on their own."""
    from tests.models import hf_model

    model = hf_model("gpt2", layers=2, hidden=64)
    ids = torch.zeros(2, 16, dtype=torch.long, device="meta")
    plan = autopar.plan(model, autopar.Cluster.from_profile("cpu", devices_per_node=2),
                        example_inputs=(ids,), global_batch_size=2, precision="fp32",
                        constraints={"cp": 1, "tp": 2})
    report = validate(model, plan, repeats=1, stages=False)
    blocks = [r for r in report.layers if ".h." in r.layer]
    assert {r.layer for r in blocks} == {"transformer.h.0", "transformer.h.1"}
    assert all(r.measured_forward_s > 0 for r in blocks)
