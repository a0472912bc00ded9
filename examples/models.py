"""Model factories in plain PyTorch, to copy when pointing autopar at your own model.

A factory builds the model on the ``meta`` device (shapes only, no memory, so a model of any
size fits on a laptop) and returns ``(model, example_inputs)`` or
``(model, example_inputs, example_kwargs)``; the first dimension of the inputs is the batch.
Optional ``batch_size`` and ``seq_len`` parameters let ``--batch`` and ``--seq-len`` reach it::

    autopar inspect --model examples/models.py:mlp
    autopar inspect --model examples/models.py:tiny_gpt --batch 8 --seq-len 512
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(batch_size: int = 8) -> tuple[nn.Module, torch.Tensor]:
    """A four-layer perceptron: the smallest thing worth inspecting."""
    with torch.device("meta"):
        model = nn.Sequential(
            nn.Linear(64, 256), nn.GELU(),
            nn.Linear(256, 256), nn.GELU(),
            nn.Linear(256, 256), nn.GELU(),
            nn.Linear(256, 10),
        )
        x = torch.randn(batch_size, 64)
    return model, x


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with one fused QKV projection, as in nanoGPT."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A nanoGPT-style decoder: token and position embeddings, blocks, final norm, LM head
    sharing the token embedding's weights.

    The blocks sit in an ``nn.ModuleList``, which is how autopar finds the pipeline layers and
    sees that they repeat (it traces two and copies the rest).
    """

    def __init__(self, vocab: int = 8192, dim: int = 256, heads: int = 8, depth: int = 6,
                 max_len: int = 1024) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying, as in GPT-2 and nanoGPT
        self.max_len = max_len

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, or the cross-entropy loss when ``targets`` are given (a training step)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def tiny_gpt(batch_size: int = 8, seq_len: int = 256
             ) -> tuple[nn.Module, tuple[torch.Tensor], dict[str, torch.Tensor]]:
    """TinyGPT on meta with token ids, and the same ids as targets so the loss is traced."""
    with torch.device("meta"):
        model = TinyGPT()
        idx = torch.zeros(batch_size, seq_len, dtype=torch.long)
    if seq_len > model.max_len:
        raise ValueError(f"seq_len {seq_len} exceeds TinyGPT's {model.max_len} positions")
    return model, (idx,), {"targets": idx}
