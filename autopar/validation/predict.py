"""What the cost model predicts for one layer of a plan, on one device, per micro-batch.

The same functions ``estimate()`` and the solver use (``layer_cost``, ``layer_activation``),
so a validation checks the numbers the plan was chosen by. ``Predicted`` also splits the time
into the part bound by arithmetic and the part bound by memory bandwidth (with launches), which
is what ``--update-profile`` fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopar.cluster import NodeGroup
from autopar.config import ParallelConfig
from autopar.cost_models.compute import op_time_parts
from autopar.cost_models.layers import LayerProfile
from autopar.estimate import layer_activation, layer_cost


@dataclass(frozen=True)
class Predicted:
    """One micro-batch of one layer on one rank."""

    forward_s: float
    backward_s: float
    """Backward plus what the recomputation mode adds."""
    saved_bytes: float
    """Activations held from forward to backward."""
    working_bytes: float
    """Activations needed again while a fully recomputed layer runs its backward."""
    gradient_bytes: float
    """Of the layer's weights."""
    output_bytes: float
    input_grad_bytes: float
    """The output and the input's gradient: a layer run alone holds them besides."""
    arithmetic_s: float
    """Of forward + backward: seconds of arithmetic-bound kernels."""
    memory_s: float
    """Of forward + backward: seconds of memory-bound kernels and launches."""

    @property
    def peak_bytes(self) -> float:
        """Above the weights and inputs: saved and working activations, weight gradients, the
        output and the input's gradient."""
        return (self.saved_bytes + self.working_bytes + self.gradient_bytes
                + self.output_bytes + self.input_grad_bytes)


def predict(profiles: list[LayerProfile], outputs: list[tuple[float, bool]], i: int,
            config: ParallelConfig, group: NodeGroup, precision: str, seq: int, mode: str,
            grad_bytes_per_param: int) -> Predicted:
    """Layer ``i`` of a rank of ``group`` under ``config``, recomputed in ``mode``;
    ``outputs`` are ``layer_profiles.layer_outputs`` of the graph."""
    cost = layer_cost(profiles[i], config, group, precision, seq)
    kept, needed = layer_activation(profiles, i, config, mode)
    arithmetic, memory = _bound_parts(profiles[i], config, group, precision, mode)
    grads = profiles[i].params_per_rank(config.tp) * grad_bytes_per_param

    def output(j: int) -> float:
        nbytes, sharded = outputs[j]
        return nbytes * config.micro_batch_size / config.cp / (config.tp if sharded else 1)
    return Predicted(forward_s=cost.forward, backward_s=cost.backward + cost.recompute(mode),
                     saved_bytes=kept, working_bytes=needed, gradient_bytes=grads,
                     output_bytes=output(i), input_grad_bytes=output(i - 1) if i else 0.0,
                     arithmetic_s=arithmetic, memory_s=memory)


def _bound_parts(profile: LayerProfile, config: ParallelConfig, group: NodeGroup,
                 precision: str, mode: str) -> tuple[float, float]:
    """(arithmetic-bound, memory-bound) seconds of forward, backward and recomputation."""
    arithmetic = memory = 0.0
    b, tp, cp = config.micro_batch_size, config.tp, config.cp
    for op in profile.ops:
        scale = b / (cp * (tp if op.sharded or config.sequence_parallel else 1))
        passes = [(op.fwd_flops, op.fwd_bytes), (op.bwd_flops, op.bwd_bytes)]
        if mode == "full" or (mode == "selective" and op.attention_core):
            passes.append((op.fwd_flops, op.fwd_bytes))
        for flops, nbytes in passes:
            a, m, launch = op_time_parts(op.op_class, flops * scale, nbytes * scale,
                                         group.device, precision)
            if a >= m:
                arithmetic += a + launch
            else:
                memory += m + launch
    return arithmetic, memory
