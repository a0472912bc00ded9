"""Hardware profiles: every bundled file validates, presets size, user files load, errors teach."""

from __future__ import annotations

import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import autopar.hardware_profiles as hardware_profiles
import pytest
from autopar.hardware_profiles.loader import DATA_DIR, ENV_VAR
from autopar.hardware_profiles.models import DTYPES, fixed_overhead_curve
from autopar.hardware_profiles.units import parse_bytes, parse_flops, parse_rate, parse_seconds
from pydantic import ValidationError

from autopar.cluster import (
    Cluster,
    DeviceProfile,
    LinkProfile,
    NodeGroup,
    ProfileError,
    known_profiles,
)
from autopar.errors import AutoparError

GiB = 2**30
TAGS = ("[datasheet]", "[measured]", "[assumed]", "[derived]", "[secondary]")
FIGURES = (
    "memory_bytes",
    "memory_bandwidth",
    "peak_flops",
    "matmul_efficiency",
    "memory_efficiency",
    "kernel_launch_overhead_s",
)


@pytest.fixture(autouse=True)
def no_user_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundled profiles only, whatever the developer's environment says."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(call: Callable[[], object], *fragments: str) -> ProfileError:
    """Run ``call`` expecting a ProfileError whose message holds every fragment."""
    with pytest.raises(ProfileError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, AutoparError)
    assert "\n" not in message.split(" e.g.")[0]  # one line for the CLI (examples may follow)
    return info.value


GROUP = """
[[groups]]
device = "H100-SXM5-80GB"
nodes = 2
devices_per_node = 8
intra_node = "nvlink4-nvswitch"
inter_node = "ib-ndr"
nics_per_node = 8
"""


# -- every bundled file ------------------------------------------------------------------------


def test_known_profiles_lists_the_bundled_files() -> None:
    known = known_profiles()
    assert set(known) == {"devices", "interconnects", "clusters"}
    for kind, names in known.items():
        assert names == sorted(names, key=str.lower)
        assert names == sorted((p.stem for p in (DATA_DIR / kind).glob("*.toml")), key=str.lower)
    expected_devices = {
        "A100-SXM4-40GB",
        "A100-SXM4-80GB",
        "H100-SXM5-80GB",
        "H200-SXM-141GB",
        "B200",
        "V100-SXM2-16GB",
        "V100-SXM2-32GB",
        "L4",
        "A10G",
        "MI300X",
        "cpu",
    }
    assert expected_devices <= set(known["devices"])
    assert {
        "nvlink2-cube-mesh",
        "nvlink3-nvswitch",
        "nvlink4-nvswitch",
        "nvlink5-nvswitch",
        "pcie-gen3-x16",
        "pcie-gen4-x16",
        "pcie-gen5-x16",
        "ib-hdr",
        "ib-ndr",
        "roce-100",
        "roce-200",
        "roce-400",
        "ethernet-25",
        "ethernet-100",
    } <= set(known["interconnects"])
    assert {
        "dgx-a100",
        "dgx-a100-40gb",
        "dgx-h100",
        "hgx-h200",
        "aws-p4d",
        "aws-p3.16xlarge",
        "cpu",
    } <= set(known["clusters"])


@pytest.mark.parametrize("name", known_profiles()["devices"])
def test_every_bundled_device_validates_and_cites_every_figure(name: str) -> None:
    device = DeviceProfile.from_profile(name)
    assert device.name == name  # the file is named after the device
    for figure in FIGURES:
        source = device.sources.get(figure, "")
        assert source.startswith(TAGS), f"{name}: {figure} source {source!r} has no tag"
    for key, source in device.sources.items():
        assert source.startswith(TAGS), f"{name}: source {key} = {source!r} has no tag"
    assert set(device.peak_flops) <= set(DTYPES) and "fp32" in device.peak_flops
    points = device.matmul_efficiency
    assert all(b[0] > a[0] and b[1] >= a[1] for a, b in zip(points, points[1:], strict=False))
    assert 0.4 < device.matmul_efficiency_at(1e13) <= 0.9  # a plausible large-GEMM plateau
    assert 0.5 <= device.memory_efficiency <= 0.95
    assert 0 < device.kernel_launch_overhead_s <= 2e-5


@pytest.mark.parametrize("name", known_profiles()["interconnects"])
def test_every_bundled_interconnect_validates_and_cites(name: str) -> None:
    link = LinkProfile.from_profile(name)
    assert link.name == name
    for figure in ("bandwidth", "latency_s"):
        assert f"{figure}: [" in link.source or f"{figure}, " in link.source, (name, figure)
    if link.allreduce_busbw is not None:
        assert "allreduce_busbw" in link.source and "[measured]" in link.source
        assert link.allreduce_busbw <= 1.1 * 2 * link.bandwidth
    assert any(tag in link.source for tag in TAGS)
    assert 0 < link.latency_s < 1e-4


@pytest.mark.parametrize("name", known_profiles()["clusters"])
def test_every_bundled_cluster_validates_and_cites(name: str) -> None:
    cluster = Cluster.from_profile(name)
    assert cluster.name == name
    assert cluster.num_nodes == 1 and len(cluster.groups) == 1
    assert not cluster.is_heterogeneous
    raw = tomllib.loads((DATA_DIR / "clusters" / f"{name}.toml").read_text())
    assert raw["source"].startswith(TAGS)
    big = Cluster.from_profile(name, nodes=4)
    assert big.world_size == 4 * cluster.world_size
    assert big.num_nodes == 4


# -- presets and their sizes -------------------------------------------------------------------


def test_from_profile_sizes_dgx_h100() -> None:
    cluster = Cluster.from_profile("dgx-h100", nodes=128)
    assert cluster.world_size == 1024
    assert cluster.num_nodes == 128
    assert cluster.devices_per_node == 8
    assert cluster.nics_per_node == 8
    assert cluster.device.name == "H100-SXM5-80GB"
    assert cluster.intra_node.name == "nvlink4-nvswitch"
    assert cluster.inter_node.name == "ib-ndr"
    assert cluster.groups[0].inter_node_bandwidth == 8 * 50e9
    assert "128 nodes x 8 H100-SXM5-80GB" in cluster.summary()
    assert "1024 devices" in cluster.summary()


@pytest.mark.parametrize(
    ("preset", "device", "intra", "inter", "nics"),
    [
        ("dgx-a100", "A100-SXM4-80GB", "nvlink3-nvswitch", "ib-hdr", 8),
        ("dgx-a100-40gb", "A100-SXM4-40GB", "nvlink3-nvswitch", "ib-hdr", 8),
        ("dgx-h100", "H100-SXM5-80GB", "nvlink4-nvswitch", "ib-ndr", 8),
        ("hgx-h200", "H200-SXM-141GB", "nvlink4-nvswitch", "ib-ndr", 8),
        ("aws-p4d", "A100-SXM4-40GB", "nvlink3-nvswitch", "efa-100", 4),
        ("aws-p3.16xlarge", "V100-SXM2-16GB", "nvlink2-cube-mesh", "ethernet-25", 1),
    ],
)
def test_presets_describe_their_machines(
    preset: str, device: str, intra: str, inter: str, nics: int
) -> None:
    cluster = Cluster.from_profile(preset, nodes=2)
    group = cluster.groups[0]
    names = (group.device.name, group.intra_node.name, group.inter_node.name)
    assert names == (device, intra, inter)
    assert (group.devices_per_node, group.nics_per_node, group.nodes) == (8, nics, 2)


def test_network_per_node_of_presets() -> None:
    assert Cluster.from_profile("dgx-a100").groups[0].inter_node_bandwidth == 8 * 25e9  # 1.6 Tb/s
    assert Cluster.from_profile("aws-p4d").groups[0].inter_node_bandwidth == 400e9 / 8
    assert Cluster.from_profile("aws-p3.16xlarge").groups[0].inter_node_bandwidth == 25e9 / 8


def test_cpu_preset_for_tests() -> None:
    cluster = Cluster.from_profile("cpu")
    assert cluster.world_size == 4 and cluster.device.name == "cpu"
    two = Cluster.from_profile("cpu", devices_per_node=2)
    assert two.world_size == 2 and two.num_nodes == 1
    assert Cluster.from_profile("cpu", nodes=2, devices_per_node=3).world_size == 6


def test_names_are_case_and_underscore_insensitive() -> None:
    assert Cluster.from_profile("DGX_H100").name == "dgx-h100"
    assert DeviceProfile.from_profile("h100-sxm5-80gb").name == "H100-SXM5-80GB"


def test_with_nodes_returns_a_resized_copy() -> None:
    one = Cluster.from_profile("dgx-a100")
    many = one.with_nodes(16)
    assert (one.num_nodes, many.num_nodes, many.world_size) == (1, 16, 128)


# -- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bf16", "memory", "bandwidth"),
    [
        ("A100-SXM4-40GB", 312e12, 40 * GiB, 1555e9),
        ("A100-SXM4-80GB", 312e12, 80 * GiB, 2039e9),
        ("H100-SXM5-80GB", 989.4e12, 80 * GiB, 3.35e12),
        ("H200-SXM-141GB", 989.4e12, 141 * GiB, 4.8e12),
        ("B200", 2250e12, 180 * GiB, 8e12),
        ("MI300X", 1307.4e12, 192 * GiB, 5.3e12),
        ("L4", 121e12, 24 * GiB, 300e9),
        ("A10G", 70e12, 24 * GiB, 600e9),
        ("V100-SXM2-16GB", 15.7e12, 16 * GiB, 900e9),
        ("V100-SXM2-32GB", 15.7e12, 32 * GiB, 900e9),
    ],
)
def test_device_numbers(name: str, bf16: float, memory: int, bandwidth: float) -> None:
    device = DeviceProfile.from_profile(name)
    assert device.peak("bf16") == pytest.approx(bf16)
    assert device.memory_bytes == memory
    assert device.memory_bandwidth == pytest.approx(bandwidth)


def test_headline_figures() -> None:
    h100 = DeviceProfile.from_profile("H100-SXM5-80GB")
    assert h100.peak("bf16") == pytest.approx(989e12, rel=1e-3)  # dense, not the 1979 sparse figure
    assert h100.peak("fp8") == pytest.approx(2 * h100.peak("bf16"), rel=1e-3)
    assert h100.peak("tf32") == pytest.approx(h100.peak("bf16") / 2, rel=1e-3)
    a100 = DeviceProfile.from_profile("A100-SXM4-80GB")
    assert a100.peak("bf16") == a100.peak("fp16") == 312e12
    assert a100.peak("fp32") == 19.5e12
    v100 = DeviceProfile.from_profile("V100-SXM2-32GB")
    assert v100.peak("fp16") == 125e12
    assert v100.peak("bf16") < v100.peak("fp16")  # no bf16 tensor cores on Volta
    # large GEMMs run at the measured plateau, small ones far below it
    assert h100.matmul_efficiency_at(2 * 8192**3) == pytest.approx(0.80, abs=0.01)
    assert a100.matmul_efficiency_at(2 * 8192**3) == pytest.approx(0.87, abs=0.01)
    assert h100.matmul_efficiency_at(2 * 256**3) < 0.05


def test_link_numbers() -> None:
    assert LinkProfile.from_profile("ib-hdr").bandwidth == 25e9  # 200 Gb/s
    assert LinkProfile.from_profile("ib-ndr").bandwidth == 50e9  # 400 Gb/s
    assert LinkProfile.from_profile("ethernet-25").bandwidth == 25e9 / 8
    assert LinkProfile.from_profile("nvlink3-nvswitch").bandwidth == 300e9
    assert LinkProfile.from_profile("nvlink3-nvswitch").allreduce_busbw == 230e9
    assert LinkProfile.from_profile("nvlink4-nvswitch").bandwidth == 450e9
    assert LinkProfile.from_profile("nvlink4-nvswitch").allreduce_busbw == 480e9
    assert LinkProfile.from_profile("pcie-gen4-x16").bandwidth == pytest.approx(31.5e9, rel=1e-3)
    assert LinkProfile.from_profile("ib-hdr").latency_s == pytest.approx(2.7e-6)


# -- peak() and matmul_efficiency_at() ---------------------------------------------------------


def test_peak_accepts_aliases_and_shares_half_precision() -> None:
    h100 = DeviceProfile.from_profile("H100-SXM5-80GB")
    for alias in ("bf16", "BF16", "bfloat16", "torch.bfloat16"):
        assert h100.peak(alias) == 989.4e12
    for alias in ("fp32", "float32", "torch.float32", "float"):
        assert h100.peak(alias) == 66.9e12
    assert h100.peak("float8_e4m3fn") == h100.peak("fp8")
    only_bf16 = DeviceProfile(
        name="x",
        memory_bytes=GiB,
        memory_bandwidth=1e12,
        peak_flops={"fp32": 1e12, "bf16": 8e12},
        matmul_efficiency=[(1e9, 0.5)],
    )
    assert only_bf16.peak("fp16") == only_bf16.peak("bf16") == 8e12


def test_peak_errors_name_the_dtype_and_the_known_ones() -> None:
    a100 = DeviceProfile.from_profile("A100-SXM4-80GB")
    error = error_of(lambda: a100.peak("fp8"), "A100-SXM4-80GB", "fp8", "fp32, tf32, bf16, fp16")
    assert error.path is None
    error_of(lambda: a100.peak("int8"), "unknown dtype 'int8'", "fp32, tf32, bf16, fp16, fp8")
    error_of(lambda: DeviceProfile.from_profile("V100-SXM2-16GB").peak("tf32"), "tf32", "fp16")


def test_matmul_efficiency_is_clamped_monotone_and_log_linear() -> None:
    device = DeviceProfile(
        name="x",
        memory_bytes=GiB,
        memory_bandwidth=1e12,
        peak_flops={"bf16": 1e14},
        matmul_efficiency=[(1e8, 0.1), (1e10, 0.5), (1e12, 0.8)],
    )
    assert device.matmul_efficiency_at(1.0) == 0.1  # clamped below
    assert device.matmul_efficiency_at(0.0) == 0.1
    assert device.matmul_efficiency_at(-5.0) == 0.1
    assert device.matmul_efficiency_at(math.nan) == 0.1
    assert device.matmul_efficiency_at(1e15) == 0.8  # clamped above
    assert device.matmul_efficiency_at(1e10) == pytest.approx(0.5)  # exact at a point
    assert device.matmul_efficiency_at(1e9) == pytest.approx(0.3)  # midway in log10
    assert device.matmul_efficiency_at(1e11) == pytest.approx(0.65)
    sweep = [device.matmul_efficiency_at(10 ** (e / 10)) for e in range(50, 160)]
    assert all(b >= a for a, b in zip(sweep, sweep[1:], strict=False))


def test_default_curve_when_a_file_gives_none() -> None:
    device = DeviceProfile.model_validate(
        {
            "name": "mine",
            "memory_bytes": "16 GiB",
            "memory_bandwidth": "1 TB/s",
            "peak_flops": {"bf16": 1e14},
        }
    )
    assert device.matmul_efficiency == fixed_overhead_curve(1e14)
    assert device.matmul_efficiency_at(1e14) == pytest.approx(0.75, abs=0.005)
    assert device.memory_efficiency == 0.85
    assert device.kernel_launch_overhead_s == 5e-6


def test_fixed_overhead_curve_is_half_the_plateau_at_its_knee() -> None:
    plateau, peak, t0 = 0.8, 1e15, 4e-6
    knee = plateau * peak * t0
    (point,) = fixed_overhead_curve(peak, plateau, t0, flops=(knee,))
    assert point[1] == pytest.approx(plateau / 2, rel=1e-3)


def test_models_are_frozen_and_closed() -> None:
    device = DeviceProfile.from_profile("L4")
    with pytest.raises(ValidationError):
        device.memory_bytes = 1
    with pytest.raises(ValidationError):
        DeviceProfile(**{**device.model_dump(), "colour": "green"})
    cluster = Cluster.from_profile("dgx-h100")
    with pytest.raises(ValidationError):
        cluster.name = "other"


def test_clusters_round_trip_through_json() -> None:
    cluster = Cluster.heterogeneous(
        Cluster.from_profile("dgx-a100", 2), Cluster.from_profile("dgx-h100", 3)
    )
    assert Cluster.model_validate_json(cluster.model_dump_json()) == cluster
    schema = Cluster.model_json_schema()
    assert {"DeviceProfile", "LinkProfile", "NodeGroup"} <= set(schema["$defs"])


def test_units() -> None:
    assert parse_bytes("80 GiB") == 80 * GiB
    assert parse_bytes("24 GB") == 24 * 10**9
    assert parse_bytes(1024) == 1024
    assert parse_rate("200 Gb/s") == 25e9
    assert parse_rate("400 Gbps") == 50e9
    assert parse_rate("3.35 TB/s") == pytest.approx(3.35e12)
    assert parse_rate(7) == 7.0
    assert parse_flops("989.4 TFLOP/s") == pytest.approx(989.4e12)
    assert parse_flops("2.25 PFLOPS") == pytest.approx(2.25e15)
    assert parse_seconds("5 us") == pytest.approx(5e-6)
    assert parse_seconds("2.7 µs") == pytest.approx(2.7e-6)
    with pytest.raises(ValueError, match="bits"):
        parse_bytes("80 Gb")
    with pytest.raises(ValueError, match="unknown unit"):
        parse_rate("3 furlongs")
    with pytest.raises(ValueError, match="boolean"):
        parse_seconds(True)


# -- cluster files, heterogeneous clusters -----------------------------------------------------


HETEROGENEOUS = """
name = "mixed"
source = "our machine room"

[[groups]]
name = "a100"
device = "A100-SXM4-80GB"
nodes = 4
devices_per_node = 8
intra_node = "nvlink3-nvswitch"
inter_node = "ib-hdr"
nics_per_node = 8

[[groups]]
name = "h100"
nodes = 4
devices_per_node = 8
intra_node = "nvlink4-nvswitch"
inter_node = { base = "ib-ndr", allreduce_busbw = "45 GB/s", source = "our nccl-tests run" }
nics_per_node = 8

[groups.device]
base = "H100-SXM5-80GB"
name = "H100-ours"
memory_efficiency = 0.9
peak_flops = { fp8 = "1900 TFLOP/s" }
"""


def test_heterogeneous_cluster_file(tmp_path: Path) -> None:
    cluster = Cluster.load(write(tmp_path / "mixed.toml", HETEROGENEOUS))
    assert cluster.name == "mixed"
    assert [group.name for group in cluster.groups] == ["a100", "h100"]
    assert cluster.world_size == 64 and cluster.num_nodes == 8
    assert cluster.is_heterogeneous
    assert cluster.devices_per_node == 8
    ours = cluster.groups[1].device
    assert ours.name == "H100-ours" and ours.memory_efficiency == 0.9
    assert ours.peak("fp8") == 1900e12 and ours.peak("bf16") == 989.4e12  # merged per key
    assert cluster.groups[1].inter_node.allreduce_busbw == 45e9
    assert cluster.groups[1].inter_node.bandwidth == 50e9
    error_of(lambda: cluster.device, "mixed", "A100-SXM4-80GB", "H100-ours", "groups")
    error_of(lambda: cluster.inter_node, "ib-hdr", "ib-ndr")
    error_of(lambda: cluster.with_nodes(2), "2 node groups", "Cluster.heterogeneous")
    mixed = tmp_path / "mixed.toml"
    error_of(lambda: Cluster.from_profile(mixed, nodes=2), "2 node groups", "mixed.toml")


def test_heterogeneous_combines_presets() -> None:
    cluster = Cluster.heterogeneous(
        Cluster.from_profile("dgx-a100", 4), Cluster.from_profile("dgx-h100", 4)
    )
    assert cluster.name == "dgx-a100+dgx-h100"
    assert cluster.world_size == 64 and cluster.is_heterogeneous
    assert [group.device.name for group in cluster.groups] == ["A100-SXM4-80GB", "H100-SXM5-80GB"]
    twice = Cluster.heterogeneous(
        Cluster.from_profile("dgx-h100", 2), Cluster.from_profile("dgx-h100", 3), name="two-pods"
    )
    assert [group.name for group in twice.groups] == ["dgx-h100", "dgx-h100-2"]
    assert not twice.is_heterogeneous and twice.device.name == "H100-SXM5-80GB"
    assert twice.num_nodes == 5
    error_of(lambda: Cluster.heterogeneous(), "at least one cluster")
    error_of(lambda: Cluster.heterogeneous("dgx-a100"), "not a Cluster")  # type: ignore[arg-type]


def test_a_group_without_network_cannot_join_others() -> None:
    lonely = Cluster.from_profile("dgx-h100")
    group = lonely.groups[0].model_copy(update={"nics_per_node": 0, "name": "island"})
    alone = Cluster(name="island", groups=[group])
    assert alone.world_size == 8
    error_of(lambda: Cluster.heterogeneous(alone, lonely), "island", "nics_per_node = 0")
    error_of(lambda: alone.with_nodes(2), "nics_per_node = 0", "network adapters")


# -- user profiles -----------------------------------------------------------------------------


MY_DEVICE = """
name = "MyAccel"
memory_bytes = "48 GiB"
memory_bandwidth = "1.2 TB/s"
[peak_flops]
fp32 = "50 TFLOP/s"
bf16 = "400 TFLOP/s"
"""

MY_CLUSTER = """
name = "lab"
[[groups]]
device = "MyAccel"
devices_per_node = 4
intra_node = "pcie-gen5-x16"
inter_node = "roce-200"
nics_per_node = 2
"""


def test_user_profiles_by_path(tmp_path: Path) -> None:
    device_file = write(tmp_path / "my_accel.toml", MY_DEVICE)
    device = DeviceProfile.from_profile(device_file)
    assert device.name == "MyAccel" and device.memory_bytes == 48 * GiB
    assert device.sources == {}  # user files may omit sources; bundled ones may not
    cluster_file = write(
        tmp_path / "lab.toml", MY_CLUSTER.replace('"MyAccel"', '"./my_accel.toml"')
    )
    by_path = Cluster.from_profile(str(cluster_file), nodes=3)
    assert by_path.world_size == 12 and by_path.device.name == "MyAccel"
    assert Cluster.load(cluster_file).num_nodes == 1
    link = LinkProfile.from_profile(
        write(tmp_path / "mylink.toml", 'bandwidth = "100 GB/s"\nlatency_s = "1 us"\n')
    )
    assert link.name == "mylink" and link.allreduce_busbw is None


def test_user_profiles_on_the_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "profiles"
    write(root / "devices" / "MyAccel.toml", MY_DEVICE)
    write(root / "clusters" / "lab.toml", MY_CLUSTER)
    write(root / "flat-lab.toml", MY_CLUSTER.replace('"lab"', '"flat-lab"'))
    empty = tmp_path / "does-not-exist"
    monkeypatch.setenv(ENV_VAR, f"{empty}{':' if sys.platform != 'win32' else ';'}{root}")
    known = known_profiles()
    assert "MyAccel" in known["devices"] and "H100-SXM5-80GB" in known["devices"]
    assert {"lab", "flat-lab", "dgx-h100"} <= set(known["clusters"])
    cluster = Cluster.from_profile("lab", nodes=2)
    assert cluster.world_size == 8 and cluster.device.peak("bf16") == 400e12
    assert Cluster.from_profile("flat-lab").name == "flat-lab"
    assert DeviceProfile.from_profile("myaccel").name == "MyAccel"
    error = error_of(lambda: Cluster.from_profile("nope"), "does-not-exist (missing)", "lab")
    assert error.field is None


def test_a_cluster_file_finds_devices_beside_it(tmp_path: Path) -> None:
    root = tmp_path / "site"
    write(root / "devices" / "MyAccel.toml", MY_DEVICE)
    cluster = Cluster.load(write(root / "clusters" / "lab.toml", MY_CLUSTER))
    assert cluster.device.name == "MyAccel"


def test_user_files_shadow_bundled_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "profiles"
    write(root / "devices" / "H100-SXM5-80GB.toml", MY_DEVICE.replace('"MyAccel"', '"mine"'))
    monkeypatch.setenv(ENV_VAR, str(root))
    assert DeviceProfile.from_profile("H100-SXM5-80GB").memory_bytes == 48 * GiB
    assert Cluster.from_profile("dgx-h100").device.name == "mine"  # bundled presets use it too


def test_node_counts_accept_integer_like_values() -> None:
    class Index:
        def __index__(self) -> int:
            return 3

    cluster = Cluster.from_profile("dgx-h100", nodes=Index())  # type: ignore[arg-type]
    assert cluster.num_nodes == 3


# -- errors ------------------------------------------------------------------------------------


def test_unknown_preset_lists_the_known_ones() -> None:
    error = error_of(
        lambda: Cluster.from_profile("dgx-h101"),
        "unknown cluster preset 'dgx-h101'",
        "Did you mean 'dgx-h100'",
        "dgx-a100",
        "aws-p4d",
        ENV_VAR,
    )
    assert error.path is None
    error_of(lambda: DeviceProfile.from_profile("H300"), "unknown device 'H300'", "H100-SXM5-80GB")
    error_of(lambda: LinkProfile.from_profile("nvlink9"), "unknown interconnect", "nvlink4")


def test_unknown_device_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", GROUP.replace('"H100-SXM5-80GB"', '"H300"'))
    error = error_of(
        lambda: Cluster.load(path),
        str(path),
        "groups[0].device",
        "unknown device 'H300'",
        "H100-SXM5-80GB",
        "inline",
    )
    assert (error.path, error.field) == (str(path), "groups[0].device")


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", 'name = "x"\n[[groups]]\ndevice = "H100\n')
    error = error_of(lambda: Cluster.load(path), str(path), "malformed TOML", "line 3")
    assert error.path == str(path)
    device = write(tmp_path / "dev.toml", "memory_bytes = = 3\n")
    error_of(lambda: DeviceProfile.from_profile(device), "dev.toml", "malformed TOML", "line 1")


def test_missing_file() -> None:
    error_of(lambda: Cluster.load("/no/such/cluster.toml"), "/no/such/cluster.toml", "no such")
    error_of(lambda: Cluster.from_profile("/no/such/cluster.toml"), "no such profile file")


def test_missing_and_invalid_fields_name_file_field_and_expectation(tmp_path: Path) -> None:
    missing = write(tmp_path / "m.toml", GROUP.replace("nics_per_node = 8\n", ""))
    error = error_of(
        lambda: Cluster.load(missing), "m.toml", "groups[0].nics_per_node", "missing", "rail"
    )
    assert error.field == "groups[0].nics_per_node"
    no_link = write(tmp_path / "l.toml", GROUP.replace('inter_node = "ib-ndr"\n', ""))
    error_of(lambda: Cluster.load(no_link), "groups[0].inter_node", "missing", "ib-ndr")
    no_groups = write(tmp_path / "g.toml", 'name = "x"\n')
    error_of(lambda: Cluster.load(no_groups), "g.toml", "groups: missing", "[[groups]]")
    wrong_type = write(tmp_path / "t.toml", GROUP.replace("nodes = 2", 'nodes = "two"'))
    error_of(lambda: Cluster.load(wrong_type), "groups[0].nodes", "positive integer")
    unknown = write(tmp_path / "u.toml", GROUP + 'colour = "red"\n')
    error_of(lambda: Cluster.load(unknown), "groups[0].colour", "unknown field", "nics_per_node")
    bits = write(
        tmp_path / "b.toml",
        GROUP.replace('"H100-SXM5-80GB"', '{ base = "H100-SXM5-80GB", memory_bytes = "80 Gb" }'),
    )
    error_of(lambda: Cluster.load(bits), "groups[0].device.memory_bytes", "bits", "GiB")
    bad_dtype = write(
        tmp_path / "d.toml",
        GROUP.replace('"H100-SXM5-80GB"', '{ base = "H100-SXM5-80GB", peak_flops = { int8 = 1 } }'),
    )
    error_of(lambda: Cluster.load(bad_dtype), "groups[0].device.peak_flops", "int8", "fp32")
    device = write(tmp_path / "dev.toml", 'name = "d"\nmemory_bandwidth = "1 TB/s"\n')
    error_of(lambda: DeviceProfile.from_profile(device), "dev.toml", "memory_bytes: missing", "GiB")
    link = write(tmp_path / "link.toml", 'bandwidth = "fast"\nlatency_s = 0\n')
    error_of(lambda: LinkProfile.from_profile(link), "link.toml", "bandwidth", "Gb/s")


def test_node_counts_must_be_positive(tmp_path: Path) -> None:
    error = error_of(lambda: Cluster.from_profile("dgx-h100", nodes=0), "nodes", "dgx-h100")
    assert error.field == "nodes"
    error_of(lambda: Cluster.from_profile("dgx-h100", nodes=-3), "got -3")
    error_of(lambda: Cluster.from_profile("dgx-h100", nodes=2.5), "positive integer")  # type: ignore[arg-type]
    error_of(lambda: Cluster.from_profile("dgx-h100", nodes=True), "positive integer")
    error_of(lambda: Cluster.from_profile("cpu", devices_per_node=0), "devices_per_node")
    error_of(lambda: Cluster.from_profile("dgx-h100").with_nodes(0), "nodes", "positive")
    in_file = write(tmp_path / "zero.toml", GROUP.replace("nodes = 2", "nodes = 0"))
    error_of(lambda: Cluster.load(in_file), "zero.toml", "groups[0].nodes", "positive integer")


def test_multi_node_group_needs_a_network(tmp_path: Path) -> None:
    path = write(tmp_path / "n.toml", GROUP.replace("nics_per_node = 8", "nics_per_node = 0"))
    error_of(lambda: Cluster.load(path), "n.toml", "groups[0]", "nics_per_node = 0")


def test_efficiency_curve_must_be_monotone_and_sorted(tmp_path: Path) -> None:
    def device(curve: str) -> Path:
        text = GROUP.replace(
            '"H100-SXM5-80GB"', f'{{ base = "H100-SXM5-80GB", matmul_efficiency = {curve} }}'
        )
        return write(tmp_path / "curve.toml", text)

    falling = device("[[1e6, 0.5], [1e9, 0.4]]")
    error_of(lambda: Cluster.load(falling), "groups[0].device.matmul_efficiency", "non-monotone")
    unsorted = device("[[1e9, 0.5], [1e6, 0.6]]")
    error_of(lambda: Cluster.load(unsorted), "matmul_efficiency", "sorted")
    above_one = device("[[1e9, 1.5]]")
    error_of(lambda: Cluster.load(above_one), "matmul_efficiency", "(0, 1]")
    with pytest.raises(ValidationError, match="non-monotone"):
        DeviceProfile(
            name="x",
            memory_bytes=1,
            memory_bandwidth=1,
            peak_flops={"fp32": 1},
            matmul_efficiency=[(1e6, 0.9), (1e7, 0.1)],
        )


def test_duplicate_group_names(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.toml", GROUP.replace("[[groups]]", '[[groups]]\nname = "a"') * 2)
    error_of(lambda: Cluster.load(path), "dup.toml", "unique", "'a'")


def test_one_copy_of_each_class() -> None:
    assert Cluster is hardware_profiles.Cluster
    assert NodeGroup is hardware_profiles.NodeGroup
    assert ProfileError is hardware_profiles.ProfileError
    assert issubclass(ProfileError, AutoparError)
