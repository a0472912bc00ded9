"""The alpha-beta collective model against published nccl-tests bus bandwidths.

Hardware (per GPU, per direction): DGX A100 has NVLink3 at 300 GB/s and one 200 Gb/s HDR NIC
(25 GB/s) per GPU, 8 rails per node; DGX H100 has NVLink4 at 450 GB/s and one 400 Gb/s NDR NIC
(50 GB/s) per GPU. Latencies per step are NCCL's own tuning figures (NVIDIA/nccl
src/graph/tuning.cc ``hwLat``: ~0.6 us per NVLink hop, ~5 us per network tree hop, LL protocol).

Published all-reduce bus bandwidths at 1-8 GB (nccl-tests ``all_reduce_perf``), all from NVIDIA
NCCL maintainers on GitHub:

- 8 x A100, one node: ~230 GB/s (S. Jeaugey, github.com/NVIDIA/nccl-tests/issues/149).
- 8 x H100, one node, ring: ~370 GB/s; with NVLink SHARP (NCCL's default): ~480 GB/s
  (S. Jeaugey, github.com/NVIDIA/nccl-tests/issues/212; 476 GB/s "in the expected range",
  github.com/NVIDIA/nccl-tests/issues/290).
- DGX A100 nodes, 8 x 200 Gb/s HDR: 192 GB/s (D. Addison, github.com/NVIDIA/nccl/issues/812);
  24 GB/s per HDR NIC (S. Jeaugey, github.com/NVIDIA/nccl/issues/412).
- DGX H100 nodes, 8 x 400 Gb/s NDR: 46-48 GB/s per NIC, i.e. 368-384 GB/s on 8 rails
  (D. Addison, github.com/NVIDIA/nccl-tests/issues/290; 48-49 GB/s in /issues/267).

The ring's scale-out bus bandwidth is flat in the node count (the maintainers advise forcing the
ring on two nodes to see it, NVIDIA/nccl#812), so the multi-node figures apply from 2 to 64 nodes.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from autopar.cost_models.communication import (
    DEFAULT_INTER_EFFICIENCY,
    DEFAULT_INTRA_EFFICIENCY,
    NVLS_ALLREDUCE_INTRA_EFFICIENCY,
    CommGroup,
    CommModelError,
    all_gather_time,
    all_reduce_time,
    all_to_all_time,
    bus_bandwidth,
    reduce_scatter_time,
    send_recv_time,
)

from autopar.errors import AutoparError

GB = 1e9  # nccl-tests reports GB/s as 1e9 bytes/s
NVLINK_LAT = 0.6e-6
NET_LAT = 5e-6
LARGE = (1 * GB, 4 * GB, 8 * GB)
NODES = (2, 4, 8, 16, 32, 64)


def dgx_a100(nodes: int = 1, **kw: float) -> CommGroup:
    return CommGroup(8 * nodes, 8, 300 * GB, NVLINK_LAT, 25 * GB, NET_LAT, **kw)


def dgx_h100(nodes: int = 1, **kw: float) -> CommGroup:
    return CommGroup(8 * nodes, 8, 450 * GB, NVLINK_LAT, 50 * GB, NET_LAT, **kw)


def busbw_gbs(kind: str, nbytes: float, g: CommGroup) -> float:
    return bus_bandwidth(kind, nbytes, g) / GB


# ---------------------------------------------------------------- calibration against published


@pytest.mark.parametrize("nbytes", LARGE)
@pytest.mark.parametrize(
    ("group", "published"),
    [(dgx_a100(), 230.0), (dgx_h100(), 370.0)],
    ids=["a100-230GBps-nccl-tests#149", "h100-ring-370GBps-nccl-tests#212"],
)
def test_single_node_all_reduce_matches_published(group, published, nbytes):
    """8-GPU NVSwitch ring all-reduce: A100 ~230 GB/s (nccl-tests#149), H100 ~370 (#212)."""
    assert busbw_gbs("all_reduce", nbytes, group) == pytest.approx(published, rel=0.10)


@pytest.mark.parametrize("nbytes", LARGE)
def test_h100_nvls_all_reduce_matches_published(nbytes):
    """NVLink SHARP all-reduce on 8 H100: ~480 GB/s (nccl-tests#212), 476 GB/s (#290)."""
    group = dgx_h100(intra_efficiency=NVLS_ALLREDUCE_INTRA_EFFICIENCY)
    assert busbw_gbs("all_reduce", nbytes, group) == pytest.approx(480.0, rel=0.10)


@pytest.mark.parametrize("nbytes", LARGE)
@pytest.mark.parametrize("nodes", NODES)
def test_multi_node_a100_all_reduce_matches_published(nodes, nbytes):
    """DGX A100 over 8 x HDR: 192 GB/s bus bandwidth (NVIDIA/nccl#812), at every scale."""
    assert busbw_gbs("all_reduce", nbytes, dgx_a100(nodes)) == pytest.approx(192.0, rel=0.10)


@pytest.mark.parametrize("nbytes", LARGE)
@pytest.mark.parametrize("nodes", NODES)
def test_multi_node_h100_all_reduce_matches_published(nodes, nbytes):
    """DGX H100 over 8 x NDR: 46-48 GB/s per NIC, ~376 GB/s on 8 rails (nccl-tests#290)."""
    assert busbw_gbs("all_reduce", nbytes, dgx_h100(nodes)) == pytest.approx(376.0, rel=0.10)


def test_default_efficiencies_are_the_calibrated_constants():
    g = dgx_a100()
    assert g.intra_efficiency == DEFAULT_INTRA_EFFICIENCY == 0.80
    assert g.inter_efficiency == DEFAULT_INTER_EFFICIENCY == 0.95


# ---------------------------------------------------------------- shape of the model


@pytest.mark.parametrize("group", [dgx_a100(), dgx_h100(), dgx_a100(8), dgx_h100(64)])
def test_small_messages_are_latency_bound(group):
    sizes = [2.0**k for k in range(3, 34)]  # 8 B .. 8 GiB
    busbw = [bus_bandwidth("all_reduce", s, group) for s in sizes]
    assert all(a < b for a, b in pairwise(busbw)), "bus bandwidth rises with size"
    assert busbw[0] < 1e-4 * busbw[-1]
    # An 8-byte all-reduce costs its latency steps and (almost) nothing else.
    r, nodes = group.ranks_per_node, group.nodes
    steps_net = min(nodes - 1, math.ceil(math.log2(nodes))) if nodes > 1 else 0
    latency = 2 * (r - 1) * NVLINK_LAT + 2 * steps_net * NET_LAT
    assert all_reduce_time(8, group) == pytest.approx(latency, rel=1e-4)


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_single_node_ring_time_scales_as_2_n_minus_1_over_n(n):
    g = CommGroup(n, n, 100 * GB, 0.0, 10 * GB, 0.0, intra_efficiency=1.0)
    assert all_reduce_time(GB, g) == pytest.approx(2 * (n - 1) / n * GB / (100 * GB))
    assert all_gather_time(GB, g) == pytest.approx((n - 1) / n * GB / (100 * GB))


def test_time_grows_with_group_size_and_latency_steps_grow_logarithmically():
    times = [all_reduce_time(GB, dgx_h100(nodes)) for nodes in (1, 2, 4, 8, 16, 32, 64)]
    assert all(a < b for a, b in pairwise(times))
    # One rank per node, no bandwidth cost to speak of: 2 * ceil(log2 N) network steps (tree),
    # or 2(N-1) while the ring is shorter.
    for nodes, steps in [(2, 2), (3, 4), (4, 4), (8, 6), (64, 12), (1000, 20)]:
        g = CommGroup(nodes, 1, 1e30, 0.0, 1e30, 1e-6)
        assert all_reduce_time(1, g) == pytest.approx(steps * 1e-6)


def test_inter_node_bound_is_the_rails_of_a_node():
    """A DP group with one rank per node gets one rail; eight ranks per node get eight."""
    one_rail = CommGroup(16, 1, 450 * GB, 0.0, 50 * GB, 0.0, inter_efficiency=1.0)
    assert busbw_gbs("all_reduce", 8 * GB, one_rail) == pytest.approx(50.0)
    eight_rails = CommGroup(128, 8, 450 * GB, 0.0, 50 * GB, 0.0, 1.0, 1.0)
    assert busbw_gbs("all_reduce", 8 * GB, eight_rails) == pytest.approx(400.0)
    # When NVLink is the slower path it bounds instead: (r-1)/r of the traffic crosses it.
    slow_nvlink = CommGroup(16, 8, 100 * GB, 0.0, 50 * GB, 0.0, 1.0, 1.0)
    assert busbw_gbs("all_reduce", 8 * GB, slow_nvlink) == pytest.approx(100 * 8 / 7)


@pytest.mark.parametrize(
    "group", [dgx_a100(), dgx_h100(2), dgx_a100(64), CommGroup(12, 4, 1e11, 1e-6, 1e10, 3e-6)]
)
def test_all_gather_plus_reduce_scatter_moves_what_all_reduce_moves(group):
    """Ring reduce-scatter + all-gather is all-reduce's bandwidth term exactly (latency aside:
    NCCL all-reduce may use a tree, the other two are rings)."""
    nbytes = 7.5e9
    split = all_gather_time(nbytes, group) + reduce_scatter_time(nbytes, group)
    # Over 512 ranks the two rings' 2 x 511 network hops still add ~6% at 7.5 GB.
    assert split == pytest.approx(all_reduce_time(nbytes, group), rel=0.1)


def test_all_gather_and_reduce_scatter_bus_bandwidth_equals_all_reduce_at_large_sizes():
    for group in (dgx_a100(), dgx_h100(16)):
        ar = bus_bandwidth("all_reduce", 8 * GB, group)
        assert bus_bandwidth("all_gather", 8 * GB, group) == pytest.approx(ar, rel=0.05)
        assert bus_bandwidth("reduce_scatter", 8 * GB, group) == pytest.approx(ar, rel=0.05)


def test_ring_collectives_become_latency_bound_across_many_nodes():
    """All-gather's latency grows with every rank of the ring (n-1 network hops across nodes);
    all-reduce's with the tree depth. A small gather over 1024 GPUs takes milliseconds."""
    small, big = dgx_a100(2), dgx_a100(128)
    assert all_gather_time(1e6, big) > 20 * all_gather_time(1e6, small)
    assert all_gather_time(1e6, big) == pytest.approx(1023 * big.inter_latency, rel=0.1)
    assert all_reduce_time(1e6, big) < all_gather_time(1e6, big)


def test_all_to_all_uses_nvlink_inside_a_node_and_one_nic_across():
    """Single node: the NVLink rate. Across nodes: about one NIC (nccl-tests#267)."""
    assert busbw_gbs("all_to_all", 8 * GB, dgx_h100()) == pytest.approx(360.0, rel=1e-3)
    g = dgx_h100(16)
    nic = 50 * DEFAULT_INTER_EFFICIENCY
    # busbw = algbw (n-1)/n with time = (n-r)/n S / nic: a little above one NIC's rate.
    assert busbw_gbs("all_to_all", 8 * GB, g) == pytest.approx(nic * 127 / 120, rel=1e-2)
    assert all_to_all_time(8, g) == pytest.approx(7 * NVLINK_LAT + 120 * NET_LAT, rel=1e-6)


def test_send_recv_is_latency_plus_size_over_bandwidth():
    assert send_recv_time(1e6, bandwidth=50 * GB, latency=5e-6) == pytest.approx(25e-6)
    assert send_recv_time(0, bandwidth=50 * GB, latency=5e-6) == 0.0


def test_one_rank_groups_and_empty_buffers_cost_nothing():
    alone = CommGroup(1, 1, 300 * GB, 1e-6, 25 * GB, 5e-6)
    for fn in (all_reduce_time, all_gather_time, reduce_scatter_time, all_to_all_time):
        assert fn(8 * GB, alone) == 0.0
        assert fn(0, dgx_a100(4)) == 0.0
    for kind in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert bus_bandwidth(kind, 8 * GB, alone) == 0.0


@pytest.mark.parametrize(
    ("kind", "fn", "factor"),
    [
        ("all_reduce", all_reduce_time, lambda n: 2 * (n - 1) / n),
        ("all_gather", all_gather_time, lambda n: (n - 1) / n),
        ("reduce_scatter", reduce_scatter_time, lambda n: (n - 1) / n),
        ("all_to_all", all_to_all_time, lambda n: (n - 1) / n),
    ],
)
def test_bus_bandwidth_is_nccl_tests_definition(kind, fn, factor):
    g = dgx_a100(2)
    expected = 1e8 / fn(1e8, g) * factor(16)
    assert bus_bandwidth(kind, 1e8, g) == pytest.approx(expected)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, r"CommGroup\.size=0"),
        ({"size": 2.0}, r"CommGroup\.size=2\.0"),
        ({"ranks_per_node": 0}, r"CommGroup\.ranks_per_node=0"),
        ({"ranks_per_node": 3}, r"ranks_per_node=3 must divide size=8"),
        ({"ranks_per_node": 16}, r"ranks_per_node=16 must divide size=8"),
        ({"intra_bandwidth": 0.0}, r"CommGroup\.intra_bandwidth=0\.0"),
        ({"inter_bandwidth": -1.0}, r"CommGroup\.inter_bandwidth=-1\.0"),
        ({"intra_latency": float("nan")}, r"CommGroup\.intra_latency=nan"),
        ({"inter_latency": -1e-6}, r"CommGroup\.inter_latency=-1e-06"),
        ({"intra_efficiency": 0.0}, r"CommGroup\.intra_efficiency=0\.0"),
        ({"inter_efficiency": float("inf")}, r"CommGroup\.inter_efficiency=inf"),
    ],
)
def test_invalid_groups_name_the_field_and_value(kwargs, match):
    fields = dict(size=8, ranks_per_node=8, intra_bandwidth=300 * GB, intra_latency=1e-6,
                  inter_bandwidth=25 * GB, inter_latency=5e-6)  # fmt: skip
    with pytest.raises(CommModelError, match=match):
        CommGroup(**{**fields, **kwargs})


def test_invalid_sizes_and_kinds_are_errors_users_can_read():
    assert issubclass(CommModelError, AutoparError)
    with pytest.raises(CommModelError, match=r"all_reduce_time nbytes=-1"):
        all_reduce_time(-1, dgx_a100())
    with pytest.raises(CommModelError, match=r"send_recv_time bandwidth=0"):
        send_recv_time(1.0, bandwidth=0, latency=0.0)
    with pytest.raises(CommModelError, match=r"unknown collective kind 'broadcast'.*all_to_all"):
        bus_bandwidth("broadcast", 1e6, dgx_a100())
