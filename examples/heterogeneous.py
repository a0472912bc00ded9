"""Plan across a heterogeneous cluster: one DGX A100 node and one DGX H100 node.

Pipeline stages are the outermost mesh dimension, so each node group holds whole stages; the
solver gives the faster H100 stage more layers. The same cluster as a TOML file::

    name = "a100+h100"
    [[groups]]
    name = "a100"; device = "A100-SXM4-80GB"; nodes = 1; devices_per_node = 8
    intra_node = "nvlink3-nvswitch"; inter_node = "ib-hdr"; nics_per_node = 8
    [[groups]]
    name = "h100"; device = "H100-SXM5-80GB"; nodes = 1; devices_per_node = 8
    intra_node = "nvlink4-nvswitch"; inter_node = "ib-ndr"; nics_per_node = 8

Run from the repository root: ``python examples/heterogeneous.py``.
"""

from __future__ import annotations

from pathlib import Path

import autopar
from autopar.cli_common import layer_ranges
from autopar.spec import load_spec

GPT2 = Path(__file__).parent / "configs" / "gpt2.json"  # GPT-2 small, 124M parameters


def main(time_limit_s: float = 10.0) -> autopar.Plan:
    loaded = load_spec(str(GPT2), seq_len=1024)  # built on the meta device: nothing allocated
    graph = autopar.trace(loaded.model, loaded.example_inputs, loaded.example_kwargs)
    cluster = autopar.Cluster.heterogeneous(autopar.Cluster.from_profile("dgx-a100", 1),
                                            autopar.Cluster.from_profile("dgx-h100", 1))
    plan = autopar.plan(graph, cluster, global_batch_size=64, time_limit_s=time_limit_s,
                        constraints={"pp": 2, "tp": 1, "schedule": "1f1b"})
    print(cluster.summary())
    print(f"step {plan.estimate.step_time * 1e3:.2f} ms, MFU {100 * plan.estimate.mfu:.1f}%")
    for stage in plan.stages:
        print(f"  stage {stage.stage} on {stage.device} (ranks {stage.ranks[0]}-"
              f"{stage.ranks[-1]}): {len(stage.layers)} layers, {layer_ranges(stage.layers)}; "
              f"busy {stage.time_s * 1e3:.2f} ms")
    return plan


if __name__ == "__main__":
    main()
