"""The executor: apply a ``Plan`` to a model with torch.distributed (DeviceMesh, DTensor tensor
parallelism, ``torch.distributed.pipelining``, FSDP2 / DDP, ``torch.distributed.checkpoint``)."""

from autopar.executor import checkpoint
from autopar.executor.errors import CheckpointError, ExecutorError, PlanMismatchError
from autopar.executor.materialise import local_shard
from autopar.executor.parallel_model import Optimizers, ParallelModel
from autopar.executor.parallelize import parallelize

__all__ = ["CheckpointError", "checkpoint", "ExecutorError", "local_shard", "Optimizers",
           "ParallelModel", "PlanMismatchError", "parallelize"]
