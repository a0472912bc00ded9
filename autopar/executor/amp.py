"""The plan's precision outside FSDP: automatic mixed precision (``torch.autocast``).

A ``bf16`` plan trains the standard AMP way wherever FSDP's
``MixedPrecisionPolicy`` does not apply (DDP, tensor-parallel DTensors, pipeline stages, the
hand-averaged paths): parameters, gradients, their data-parallel reduction and the optimizer
stay float32 (master weights); each forward runs under ``torch.autocast`` with the plan's
dtype on the rank's device type, so matrix products (linear layers, batched matmuls, SDPA)
run in bf16/fp16 from float32 weights cast on the fly, and autocast's float32 ops (softmax,
losses, norms on CUDA) stay float32. The backward follows the forward's dtypes. Under FSDP the
policy casts the gathered parameters to the plan's dtype instead (every op of the layer then
sees bf16/fp16 weights), with float32 gradient reduction: both paths keep float32 masters and
float32 gradient reduction, and run the matrix products in the plan's dtype.

``fp16`` needs loss scaling, which the executor does not provide yet: it is refused on every
path with ``ExecutorError`` (plan with ``precision='bf16'``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from autopar.executor.errors import ExecutorError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The compute dtype of each mixed precision (``fp32`` has none: plain float32)."""


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype matrix products run in under ``precision`` (None: float32 throughout).
    Refuses a precision the executor cannot train in."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        raise ExecutorError("precision='fp16' needs loss scaling (a GradScaler whose "
                            "found-inf decision all ranks share), which the executor does not "
                            "provide yet; plan with precision='bf16' (same memory and speed "
                            "model, no scaling needed) or 'fp32'")
    if precision not in DTYPES:
        raise ExecutorError(f"precision={precision!r} is not one the executor runs; "
                            "use 'bf16' or 'fp32'")
    return DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for float32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
