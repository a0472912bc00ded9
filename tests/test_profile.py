"""``autopar profile``: micro-benchmarks fitted into a device profile the cost models read."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from autopar.cost_models.compute import op_time

from autopar.cli import main
from autopar.cluster import Cluster, DeviceProfile, LinkProfile
from autopar.profiling import MeasuredProfile, profile_device, write_profile
from autopar.profiling.benchmarks import Sample
from autopar.profiling.fit import efficiency_curve, isotonic
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
    assert 1e6 < link.bandwidth < 1e12 and link.allreduce_busbw == link.bandwidth
    assert 0 < link.latency_s < 0.1


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
