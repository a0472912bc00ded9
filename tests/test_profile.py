"""``autopar profile``: micro-benchmarks fitted into a device profile the cost models read."""

from __future__ import annotations

import math
import random
import socket
import time
from pathlib import Path

import pytest
import torch
from autopar.cost_models.communication import CommGroup, all_reduce_time
from autopar.cost_models.compute import op_time

from autopar.cli import main
from autopar.cluster import Cluster, DeviceProfile, LinkProfile
from autopar.profiling import MeasuredProfile, benchmarks, known_gpu, profile_device, write_profile
from autopar.profiling.benchmarks import Sample
from autopar.profiling.fit import efficiency_curve, isotonic, link_fields
from autopar.profiling.measure import MeasureError


@pytest.fixture(scope="module")
def measured() -> MeasuredProfile:
    """One short profile of this machine's CPU, with all-reduce across two processes."""
    return profile_device("cpu", processes=2, budget_s=6.0)


def _non_decreasing(curve: list[tuple[float, float]]) -> bool:
    flops = [f for f, _ in curve]
    fractions = [e for _, e in curve]
    return (all(a < b for a, b in zip(flops, flops[1:], strict=False))
            and all(a <= b for a, b in zip(fractions, fractions[1:], strict=False)))


def test_curves_are_monotone_and_sane(measured: MeasuredProfile) -> None:
    device = measured.device
    assert set(device.matmul_efficiency_by_dtype) >= {"fp32"}
    for dtype, curve in device.matmul_efficiency_by_dtype.items():
        assert len(curve) >= 4, dtype  # a sweep, not one constant
        assert _non_decreasing(curve), (dtype, curve)
        assert all(0 < e <= 1 for _, e in curve)
        assert curve[-1][1] >= 0.3, (dtype, curve)  # large GEMMs near the (measured) peak
        assert 1e9 <= device.peak(dtype) <= 1e15  # a CPU: GFLOP/s to PFLOP/s
    assert device.attention_efficiency is not None
    assert _non_decreasing(device.attention_efficiency)
    assert 1e8 <= device.memory_bandwidth <= 1e13
    assert 0 < device.memory_efficiency <= 1
    assert device.memory_efficiency_by_bytes is not None
    assert all(0 < e <= 1 for _, e in device.memory_efficiency_by_bytes)
    assert 0 < device.kernel_launch_overhead_s < 1e-3
    assert all(s.startswith("[measured]") for k, s in device.sources.items())


def test_the_cost_model_reads_the_profile(measured: MeasuredProfile) -> None:
    """A bigger matmul takes longer but never runs at a lower rate; the dtype's curve is used."""
    device = measured.device
    small, large = op_time("matmul", 1e7, 0, device, "fp32"), op_time("matmul", 1e10, 0,
                                                                        device, "fp32")
    assert large > small
    assert 1e10 / large >= 1e7 / small
    assert device.matmul_efficiency_at(1e10, "fp32") == pytest.approx(
        device.matmul_efficiency_at(1e10, "float32"))


def test_link_is_measured(measured: MeasuredProfile) -> None:
    link = measured.link
    assert isinstance(link, LinkProfile)
    assert 1e6 < link.bandwidth < 1e12 and link.allreduce_busbw is not None
    assert 0 < link.latency_s < 0.1


def test_the_comm_model_gives_back_the_measured_all_reduce() -> None:
    """The fitted link, through the cost model's all-reduce (and its ring efficiency), times
    the measured sizes as measured: the bandwidth was once the bus bandwidth itself, which the
    model's efficiency then cut by a fifth."""
    latency, busbw, ranks = 20e-6, 10e9, 4
    samples = [Sample("all_reduce", "fp32", (n, ranks), 0.0, 4.0 * n,
                      2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * 4.0 * n / busbw)
               for n in (1 << 10, 1 << 16, 1 << 24)]
    link = LinkProfile.model_validate(link_fields(samples, name="l", provenance="test"))
    group = CommGroup(size=ranks, ranks_per_node=ranks, intra_bandwidth=link.bandwidth,
                      intra_latency=link.latency_s, inter_bandwidth=1e9, inter_latency=0.0)
    for s in samples:
        assert all_reduce_time(s.bytes, group) == pytest.approx(s.seconds, rel=0.01)
    assert link.allreduce_busbw == pytest.approx(busbw, rel=0.02)  # latency included


def test_written_files_load_back(measured: MeasuredProfile, tmp_path: Path) -> None:
    written = write_profile(measured, tmp_path / "box.toml")
    assert [p.name for p in written] == ["box.toml", "box.link.toml", "box.cluster.toml"]
    assert DeviceProfile.from_profile(tmp_path / "box.toml") == measured.device
    assert LinkProfile.from_profile(tmp_path / "box.link.toml") == measured.link
    cluster = Cluster.load(tmp_path / "box.cluster.toml")
    assert cluster.world_size == 2 and cluster.groups[0].device == measured.device


def test_cli_profile_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cpu.toml"
    assert main(["profile", "--budget", "3", "-o", str(out), "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert DeviceProfile.from_profile(out).matmul_efficiency_by_dtype


def test_cli_profile_refuses_a_missing_device(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    assert main(["profile", "--device", "cuda", "-o", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "x.toml").exists()
    with pytest.raises(MeasureError, match="only cpu and cuda"):
        profile_device("mps")


def test_isotonic_is_the_closest_non_decreasing_fit() -> None:
    assert isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert isotonic([5, 4, 3]) == [4, 4, 4]
    noisy = [x + random.Random(x).uniform(-3, 3) for x in range(50)]
    fitted = isotonic(noisy)
    assert all(a <= b for a, b in zip(fitted, fitted[1:], strict=False))
    assert sum(fitted) == pytest.approx(sum(noisy))  # pooling keeps the mean


def test_noisy_samples_fit_a_monotone_curve() -> None:
    """A neighbour slowing some runs down must not make bigger GEMMs look slower."""
    rng = random.Random(0)
    peak = 1e11
    samples = []
    for n in (64, 128, 256, 512, 1024):
        flops = 2.0 * n**3
        seconds = 2e-6 + flops / (0.9 * peak) * (1 + rng.uniform(0, 2))
        samples.append(Sample("matmul", "fp32", (n, n, n), flops, 0.0, seconds))
    curve = efficiency_curve(samples, peak)
    assert _non_decreasing(curve)
    assert all(0 < e <= 1 for _, e in curve)
    assert math.isclose(curve[0][0], 2.0 * 64**3, rel_tol=1e-2)


def test_a_failed_all_reduce_is_a_measure_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank that fails (here: its rendezvous port is taken) is one line naming the fix, not
    torch.multiprocessing's traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(benchmarks, "_free_port", lambda: busy.getsockname()[1])
        with pytest.raises(MeasureError, match="all-reduce across 2 local ranks failed.*"
                                               "--processes 1"):
            benchmarks.all_reduce(torch.device("cpu"), 2, lambda _: None)


@pytest.mark.parametrize(("name", "gib", "profile"), [
    ("NVIDIA H100 80GB HBM3", 79.1, "H100-SXM5-80GB"),
    ("NVIDIA H200", 139.8, "H200-SXM-141GB"),
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100-SXM4-80GB"),  # not the 40 GB one listed first
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100-SXM4-40GB"),
    ("Tesla V100-SXM2-32GB", 31.7, "V100-SXM2-32GB"),
    ("NVIDIA L4", 22.0, "L4"),
    ("NVIDIA L40S", 44.4, None),  # not an L4
    ("NVIDIA GH200 480GB", 94.5, None),  # not an H200
    ("NVIDIA H100 PCIe", 79.1, None),  # not the SXM5 datasheet
    ("AMD Instinct MI300X", 191.5, "MI300X"),
])
def test_a_gpu_finds_its_datasheet(name: str, gib: float, profile: str | None) -> None:
    found = known_gpu(name, int(gib * 2**30))
    assert (found.name if found else None) == profile


def test_a_missing_output_directory_is_refused_before_measuring(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not after the whole budget was spent measuring."""
    out = tmp_path / "missing" / "cpu.toml"
    started = time.perf_counter()
    assert main(["profile", "--budget", "60", "-o", str(out)]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_sizes_whose_flops_round_alike_make_one_point() -> None:
    """The profile needs strictly increasing FLOPs: two sizes equal to three digits were two
    equal points, which DeviceProfile refused."""
    samples = [Sample("matmul", "fp32", (1,), flops, 0.0, 1e-2)
               for flops in (1.0001e9, 1.0002e9, 4e9)]
    assert efficiency_curve(samples, 1e12) == [(1e9, 0.1), (4e9, 0.4)]
