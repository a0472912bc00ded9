"""Model factories for the SPEC and CLI tests: good ones, and each way a factory goes wrong."""

from __future__ import annotations

import torch
from torch import nn

NOT_CALLABLE = 42


def _linear() -> nn.Linear:
    with torch.device("meta"):
        return nn.Linear(16, 8)


def pair() -> tuple[nn.Module, torch.Tensor]:
    """The usual form: (model, one input tensor)."""
    return _linear(), torch.zeros(2, 16, device="meta")


def triple() -> tuple[nn.Module, list[torch.Tensor], dict[str, object]]:
    """(model, positional inputs as a list, keyword inputs)."""
    return _linear(), [torch.zeros(2, 16, device="meta")], {}


def sized(batch_size: int = 3, seq_len: int = 5) -> tuple[nn.Module, torch.Tensor]:
    """Takes --batch/--seq-len: the input is [batch_size, seq_len, 16]."""
    return _linear(), torch.zeros(batch_size, seq_len, 16, device="meta")


def shape_mismatch() -> tuple[nn.Module, torch.Tensor]:
    """Linear(16, 8) fed 10 features: the model rejects its own example input."""
    return _linear(), torch.zeros(2, 10, device="meta")


def raises() -> tuple[nn.Module, torch.Tensor]:
    raise RuntimeError("checkpoint not found\nsecond line of detail")


def model_only() -> nn.Module:
    return _linear()


def one_tuple() -> tuple[nn.Module]:
    return (_linear(),)


def not_a_module() -> tuple[str, torch.Tensor]:
    return "linear", torch.zeros(2, 16)


def bad_inputs() -> tuple[nn.Module, str]:
    return _linear(), "a string"


def bad_kwargs() -> tuple[nn.Module, torch.Tensor, list[int]]:
    return _linear(), torch.zeros(2, 16), [1, 2]


class _Result:
    """Not a pytree: torch.export refuses it, so tracing falls back to module hooks."""

    def __init__(self, y: torch.Tensor) -> None:
        self.y = y


class _Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> _Result:
        return _Result(self.linear(x))


def export_fails() -> tuple[nn.Module, torch.Tensor]:
    with torch.device("meta"):
        return _Opaque(), torch.zeros(2, 8)


def no_params() -> tuple[nn.Module, torch.Tensor]:
    """Nothing to parallelise: a model without parameters."""
    return nn.ReLU(), torch.zeros(2, 8)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y if y.sum() > 0 else -y  # branches on a value: untraceable without data


def untraceable() -> tuple[nn.Module, torch.Tensor]:
    return nn.Sequential(nn.Linear(8, 8), _Branchy()), torch.zeros(2, 8)
