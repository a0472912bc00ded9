"""How long an NCCL collective takes on a two-level GPU cluster: an alpha-beta model.

A *group* is the set of ranks taking part in one collective. Its ranks sit ``ranks_per_node`` to
a node: inside a node they talk over NVLink through an NVSwitch (every GPU at its full link
bandwidth at once); across nodes each rank sends over its own NIC ("rail"). Every collective
costs a latency term (alpha: a per-step latency times a number of steps) plus a bandwidth term
(beta: bytes a rank pushes over a link divided by that link's achieved bandwidth), and the
slowest link class bounds the bandwidth term because NCCL pipelines its chunks through all links
at once.

Bandwidth term. NCCL runs large collectives as rings. On a rail-optimised cluster each ring
channel walks through a node's GPUs over NVLink and leaves it once through one NIC, the channels
spread over all NICs. Of the ``2(n-1)/n * S`` bytes every rank forwards in an all-reduce of
``S`` bytes over ``n`` ranks, the fraction ``(r-1)/r`` therefore crosses NVLink and ``1/r``
crosses the network, where the node's ``r`` rails share it. Hence::

    t_bw = 2(n-1)/n * S * max((r-1)/r / B_intra, 1/(r * B_inter))

with ``B = bandwidth * efficiency``. Inside one node it is the plain ring ``2(n-1)/n * S /
B_intra``. This is the hierarchical path (intra-node reduce-scatter, inter-node exchange on all
rails in parallel, intra-node all-gather) with the inter-node stage carrying the ring's share.
We deliberately do not credit a 2-D hierarchical algorithm's smaller inter-node volume
(``2(N-1)/N * S/r`` per rail): NCCL does not run that algorithm on InfiniBand without
SHARP/CollNet, and the published scale-out figures below are flat in the node count. Crediting it
would predict 34 % more bus bandwidth than measured on 2 DGX A100 nodes and 11 % more on 8.

Latency term. A ring takes ``2(n-1)`` steps for an all-reduce; on many nodes NCCL switches to a
tree for latency-bound sizes. We charge the intra-node steps of the ring, ``2(r-1)`` times the
NVLink latency, plus ``2 * min(N-1, ceil(log2 N))`` network latencies across ``N`` nodes: a
ring over few nodes, a (double binary) tree's depth over many. On three or more nodes a tree
and a ring both move about ``2S`` per node over the network, so pairing the ring's bandwidth
term with the tree's latency term is what NCCL's per-size choice of algorithm achieves.

Calibration (``docs/cost_models.md`` has the table). ``DEFAULT_INTRA_EFFICIENCY`` and
``DEFAULT_INTER_EFFICIENCY`` turn line rates into the bus bandwidth nccl-tests reports for
messages of 1-8 GB:

- NVLink: NCCL's SM-driven copies carry 128-byte payloads, so a 25 GB/s NVLink moves about
  20 GB/s, i.e. 80 % (S. Jeaugey, NVIDIA, github.com/NVIDIA/nccl-tests/issues/149); measured ring
  all-reduce: ~230 GB/s on 8 A100 (ibid.), ~370 GB/s on 8 H100 with ``NCCL_ALGO=RING``
  (github.com/NVIDIA/nccl-tests/issues/212).
- InfiniBand: 24 GB/s per HDR NIC (github.com/NVIDIA/nccl/issues/412); 192 GB/s all-reduce bus
  bandwidth on DGX A100 nodes with 8x200 Gb/s HDR (github.com/NVIDIA/nccl/issues/812); 46-49
  GB/s per NDR 400 Gb/s NIC (github.com/NVIDIA/nccl-tests/issues/290 and /issues/267), i.e.
  95 %.

Not modelled: NVLink SHARP (NVLS), which H100 NCCL uses by default for single-node all-reduce
(~480 GB/s bus bandwidth; pass ``intra_efficiency=NVLS_ALLREDUCE_INTRA_EFFICIENCY`` to
``all_reduce_time`` groups to model it); the two-node tree, which can beat the ring by up to
~1.9x when the network is the bottleneck and the node has few NICs; network congestion and
oversubscription; protocol switches (LL/LL128/Simple) beyond the alpha term.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from autopar.errors import AutoparError

#: Achieved fraction of the NVLink line rate for large NCCL ring collectives: 128-byte payloads
#: make a 25 GB/s NVLink carry ~20 GB/s (S. Jeaugey, NVIDIA/nccl-tests#149). Gives 240 GB/s on
#: DGX A100 (measured ~230) and 360 GB/s on DGX H100 (measured ~370 with NCCL_ALGO=RING,
#: NVIDIA/nccl-tests#212).
DEFAULT_INTRA_EFFICIENCY = 0.80

#: Achieved fraction of the InfiniBand line rate per NIC: 24 of 25 GB/s per HDR NIC
#: (NVIDIA/nccl#412), 192 GB/s on 8 HDR rails (NVIDIA/nccl#812), 46-49 of 50 GB/s per NDR NIC
#: (NVIDIA/nccl-tests#290, #267).
DEFAULT_INTER_EFFICIENCY = 0.95

#: ``intra_efficiency`` that reproduces NVLink-SHARP (NVLS) all-reduce inside one NVSwitch-3
#: node (H100): ~480 GB/s bus bandwidth on 450 GB/s links (S. Jeaugey, NVIDIA/nccl-tests#212;
#: 476 GB/s called "in the expected range" in NVIDIA/nccl-tests#290). For single-node
#: all-reduce only: all-gather and reduce-scatter still run as rings (DEFAULT_INTRA_EFFICIENCY).
NVLS_ALLREDUCE_INTRA_EFFICIENCY = 1.05

#: The collectives ``bus_bandwidth`` knows, with nccl-tests' bus-bandwidth factor for n ranks.
BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


class CommModelError(AutoparError):
    """A communication-model input is invalid (a group, a size, a bandwidth or a latency)."""


def _check_number(name: str, value: float, *, positive: bool) -> None:
    """Raise CommModelError unless ``value`` is a finite number, > 0 (positive) or >= 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise CommModelError(f"{name}={value!r} must be a finite number {bound}")


@dataclass(frozen=True)
class CommGroup:
    """The ranks taking part in one collective and the links between them."""

    size: int  # ranks in the group
    ranks_per_node: int  # the group's ranks sharing one node (1..size); size/ranks_per_node nodes
    intra_bandwidth: float  # bytes/s per direction per GPU inside a node (NVLink/NVSwitch)
    intra_latency: float  # s per step over NVLink
    inter_bandwidth: float  # bytes/s per direction available to EACH rank across nodes (its rail)
    inter_latency: float  # s per step over the network
    intra_efficiency: float = DEFAULT_INTRA_EFFICIENCY  # achieved fraction of intra_bandwidth
    inter_efficiency: float = DEFAULT_INTER_EFFICIENCY  # achieved fraction of inter_bandwidth

    def __post_init__(self) -> None:
        for name in ("size", "ranks_per_node"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise CommModelError(f"CommGroup.{name}={value!r} must be an integer >= 1")
        if self.ranks_per_node > self.size or self.size % self.ranks_per_node:
            raise CommModelError(
                f"CommGroup.ranks_per_node={self.ranks_per_node} must divide "
                f"size={self.size}: a group spans a whole number of nodes"
            )
        for name in ("intra_bandwidth", "inter_bandwidth", "intra_efficiency", "inter_efficiency"):
            _check_number(f"CommGroup.{name}", getattr(self, name), positive=True)
        for name in ("intra_latency", "inter_latency"):
            _check_number(f"CommGroup.{name}", getattr(self, name), positive=False)

    @property
    def nodes(self) -> int:
        """Number of nodes the group spans."""
        return self.size // self.ranks_per_node


def _ring_seconds_per_byte(g: CommGroup) -> float:
    """Seconds per byte a rank forwards around a rail-aligned ring; the slowest link bounds it."""
    intra = g.intra_bandwidth * g.intra_efficiency
    if g.nodes == 1:
        return 1.0 / intra
    r = g.ranks_per_node
    inter = g.inter_bandwidth * g.inter_efficiency
    return max((r - 1) / r / intra, 1.0 / (r * inter))


def _inter_node_steps(nodes: int) -> int:
    """Latency steps of one reduce or broadcast sweep over the nodes: ring, or tree depth."""
    return min(nodes - 1, math.ceil(math.log2(nodes))) if nodes > 1 else 0


def _half_latency(g: CommGroup) -> float:
    """Latency of a reduce-scatter or all-gather: half an all-reduce's steps."""
    return (g.ranks_per_node - 1) * g.intra_latency + _inter_node_steps(g.nodes) * g.inter_latency


def _ring_latency(g: CommGroup) -> float:
    """Latency of a ring all-gather or reduce-scatter: NCCL has no tree for these, so every one
    of the n-1 steps waits for its slowest hop, a network hop once the ring leaves the node.
    This is what makes ZeRO-3/FSDP gathers latency-bound across hundreds of nodes."""
    hop = g.inter_latency if g.nodes > 1 else g.intra_latency
    return (g.size - 1) * hop


def _check_bytes(name: str, nbytes: float) -> None:
    _check_number(name, nbytes, positive=False)


def all_reduce_time(nbytes: float, g: CommGroup) -> float:
    """Seconds to all-reduce ``nbytes`` (the buffer each rank holds) over the group."""
    _check_bytes("all_reduce_time nbytes", nbytes)
    n = g.size
    if n == 1 or nbytes == 0:
        return 0.0
    return 2 * _half_latency(g) + 2 * (n - 1) / n * nbytes * _ring_seconds_per_byte(g)


def _ring_pass(nbytes: float, g: CommGroup) -> float:
    """One pass of a ring over the group: each rank forwards (n-1)/n of ``nbytes``."""
    n = g.size
    if n == 1 or nbytes == 0:
        return 0.0
    return _ring_latency(g) + (n - 1) / n * nbytes * _ring_seconds_per_byte(g)


def all_gather_time(nbytes_total_output: float, g: CommGroup) -> float:
    """Seconds to all-gather: every rank ends with ``nbytes_total_output`` (n shards)."""
    _check_bytes("all_gather_time nbytes_total_output", nbytes_total_output)
    return _ring_pass(nbytes_total_output, g)


def reduce_scatter_time(nbytes_total_input: float, g: CommGroup) -> float:
    """Seconds to reduce-scatter ``nbytes_total_input`` per rank into n reduced shards."""
    _check_bytes("reduce_scatter_time nbytes_total_input", nbytes_total_input)
    return _ring_pass(nbytes_total_input, g)


def all_to_all_time(nbytes_per_rank: float, g: CommGroup) -> float:
    """Seconds for an all-to-all where each rank sends ``nbytes_per_rank`` in n equal parts.

    Every rank sends ``S/n`` to each peer directly: ``(r-1)/n * S`` over NVLink and
    ``(n-r)/n * S`` over its own NIC (NCCL cannot spread one rank's all-to-all over other NICs,
    NVIDIA/nccl-tests#267), the slower of the two bounding. One latency per peer, as in a
    pairwise exchange; conservative for small groups, where NCCL overlaps peers.
    """
    _check_bytes("all_to_all_time nbytes_per_rank", nbytes_per_rank)
    n, r = g.size, g.ranks_per_node
    if n == 1 or nbytes_per_rank == 0:
        return 0.0
    share = nbytes_per_rank / n
    t_intra = (r - 1) * share / (g.intra_bandwidth * g.intra_efficiency)
    t_inter = (n - r) * share / (g.inter_bandwidth * g.inter_efficiency)
    latency = (r - 1) * g.intra_latency + (n - r) * g.inter_latency
    return latency + max(t_intra, t_inter)


def send_recv_time(nbytes: float, *, bandwidth: float, latency: float) -> float:
    """Seconds to send ``nbytes`` point to point (pipeline activations): latency + size/bw.

    ``bandwidth`` is the achieved bytes/s of the link (apply an efficiency before passing it).
    Sending nothing costs nothing.
    """
    _check_bytes("send_recv_time nbytes", nbytes)
    _check_number("send_recv_time bandwidth", bandwidth, positive=True)
    _check_number("send_recv_time latency", latency, positive=False)
    return 0.0 if nbytes == 0 else latency + nbytes / bandwidth


_TIMES: dict[str, Callable[[float, CommGroup], float]] = {
    "all_reduce": all_reduce_time,
    "all_gather": all_gather_time,
    "reduce_scatter": reduce_scatter_time,
    "all_to_all": all_to_all_time,
}


def bus_bandwidth(kind: str, nbytes: float, g: CommGroup) -> float:
    """Predicted nccl-tests bus bandwidth (bytes/s) of collective ``kind`` on ``nbytes``.

    ``nbytes`` is nccl-tests' size column: the per-rank buffer for all-reduce and all-to-all,
    the whole (gathered) buffer for all-gather and reduce-scatter. busbw = algbw * factor, with
    algbw = nbytes / time and factor 2(n-1)/n for all-reduce, (n-1)/n for the others
    (nccl-tests doc/PERFORMANCE.md). 0 for a one-rank group or an empty buffer.
    """
    if kind not in _TIMES:
        raise CommModelError(f"unknown collective kind {kind!r}; known: {', '.join(_TIMES)}")
    seconds = _TIMES[kind](nbytes, g)
    if seconds == 0:
        return 0.0
    return nbytes / seconds * BUS_FACTORS[kind](g.size)
