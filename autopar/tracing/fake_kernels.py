"""Fill gaps in fake-tensor kernels, so what a model asks for can be costed on fake tensors.

``_grouped_mm`` (the grouped GEMM of mixture-of-experts layers) has a meta function that only
accepts bf16, while models in fp32 call it too (Hugging Face's default experts kernel). Its
output shape does not depend on the dtype, so the shim asks the meta function in bf16 and hands
back the dtype the caller used. It sits *below* the cost recorder, which therefore counts the
call as the model made it.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_GROUPED_MM = torch.ops.aten._grouped_mm.default


class FakeKernelShims(TorchDispatchMode):
    """Answers fake-tensor calls whose meta functions are narrower than the real kernels."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _GROUPED_MM and args[0].dtype != torch.bfloat16:
            dtype = args[0].dtype
            out = func(args[0].to(torch.bfloat16), args[1].to(torch.bfloat16), *args[2:],
                       **kwargs)
            return out.to(dtype)
        return func(*args, **kwargs)
