"""``ParallelConfig``: one point in the space of ways to split a training step across devices."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autopar.errors import AutoparError, field_problems

Schedule = Literal["gpipe", "1f1b", "interleaved", "zero_bubble"]
Recompute = Literal["none", "selective", "full"]


class ConfigError(AutoparError):
    """A parallel configuration that cannot run on this model and cluster, and why."""


class ParallelConfig(BaseModel):
    """How one training step is split: data, tensor, pipeline and context parallelism.

    Devices are arranged as ``dp x pp x cp x tp`` (tp innermost, so a tensor-parallel group sits
    on adjacent devices of one node whenever it fits). ``layers_per_stage`` gives the pipeline
    split as a count of graph layers per stage, in order (``None``: as even as possible).
    ``recompute`` is one mode for every layer or one per layer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dp: int = Field(1, ge=1, description="data-parallel degree")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage; 3 is FSDP")
    tp: int = Field(1, ge=1, description="tensor-parallel degree")
    sequence_parallel: bool = False
    pp: int = Field(1, ge=1, description="pipeline-parallel degree (stages)")
    schedule: Schedule = "1f1b"
    virtual_stages: int = Field(1, ge=1, description="model chunks per device (interleaved)")
    layers_per_stage: tuple[int, ...] | None = None
    cp: int = Field(1, ge=1, description="context-parallel degree (sequence split)")
    recompute: Recompute | tuple[Recompute, ...] = "none"
    micro_batch_size: int = Field(1, ge=1, description="samples per micro-batch per replica")

    def __init__(self, **fields: object) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigError(f"invalid ParallelConfig: {field_problems(exc, 'config')}"
                              ) from None

    @property
    def world_size(self) -> int:
        """Devices the configuration uses."""
        return self.dp * self.tp * self.pp * self.cp

    def recompute_of(self, layer: int) -> Recompute:
        """The recomputation mode of one layer."""
        if isinstance(self.recompute, str):
            return self.recompute
        return self.recompute[layer]

    def micro_batches(self, global_batch_size: int) -> int:
        """Micro-batches per replica per step; raises if the batch does not split evenly."""
        per_replica, rest = divmod(global_batch_size, self.dp)
        if rest or per_replica % self.micro_batch_size:
            raise ConfigError(
                f"global_batch_size {global_batch_size} does not split into dp={self.dp} "
                f"replicas of micro-batches of {self.micro_batch_size}: it must be a multiple "
                f"of dp x micro_batch_size = {self.dp * self.micro_batch_size}")
        return per_replica // self.micro_batch_size

    def stage_layers(self, is_block: list[bool]) -> list[range]:
        """The graph layers of each pipeline chunk (pp x virtual_stages of them, in order).

        ``is_block[i]`` says whether layer ``i`` is one of the model's repeated blocks. Without
        ``layers_per_stage`` the split is Megatron's: blocks spread as evenly as possible, the
        layers before the first block (embeddings) on the first chunk, and every other layer
        that is not a block with the block before it: the final norm and head on the last
        chunk, an encoder's final norm and a decoder's embedding (T5) with the encoder's last
        block.
        """
        num_layers = len(is_block)
        chunks = self.pp * self.virtual_stages
        if self.layers_per_stage is not None:
            counts = list(self.layers_per_stage)
            if len(counts) != chunks or sum(counts) != num_layers or min(counts) < 1:
                raise ConfigError(
                    f"layers_per_stage {counts} must list {chunks} positive counts (pp x "
                    f"virtual_stages) adding up to the model's {num_layers} layers")
            bounds = list(itertools.accumulate(counts, initial=0))
        else:
            blocks = [i for i, b in enumerate(is_block) if b] or list(range(num_layers))
            if chunks > len(blocks):
                raise ConfigError(
                    f"pp x virtual_stages = {chunks} pipeline chunks but the model has only "
                    f"{len(blocks)} blocks to split; use fewer stages")
            base, extra = divmod(len(blocks), chunks)
            firsts = [blocks[c * base + min(c, extra)] for c in range(1, chunks)]
            bounds = [0, *firsts, num_layers]
        return [range(a, b) for a, b in itertools.pairwise(bounds)]
