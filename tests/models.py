"""Small models the tests share: plain PyTorch and Hugging Face, built on any device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from autopar import ModelGraph, trace


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(),
                         nn.Linear(64, 10))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class NestedStages(nn.Module):
    """Stages of blocks in nested ModuleLists, with a projection between stages."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.stages = nn.ModuleList([
            nn.ModuleList([Block(32) for _ in range(3)]),
            nn.ModuleList([Block(48) for _ in range(4)]),
        ])
        self.proj = nn.Linear(32, 48)
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.stages[0]:
            x = block(x)
        x = self.proj(x)
        for block in self.stages[1]:
            x = block(x)
        return self.head(x).mean(dim=1)


class Expert(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.up(x)))


class MoEBlock(nn.Module):
    """Top-k routing over a ModuleList of experts, written the common eager way."""

    def __init__(self, width: int = 32, hidden: int = 64, experts: int = 8, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.norm = nn.LayerNorm(width)
        self.router = nn.Linear(width, experts, bias=False)
        self.experts = nn.ModuleList([Expert(width, hidden) for _ in range(experts)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = self.norm(x).reshape(-1, shape[-1])
        weights, chosen = torch.topk(self.router(h).softmax(-1), self.top_k, dim=-1)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel() == 0:
                continue
            out.index_add_(0, token, expert(h[token]) * weights[token, slot, None])
        return x + out.reshape(shape)


class TinyMoE(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.blocks = nn.ModuleList([MoEBlock() for _ in range(layers)])
        self.head = nn.Linear(32, 100)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@dataclass
class Prediction:
    """A custom output type torch.export cannot flatten: forces the module-hooks path."""

    logits: torch.Tensor


class CustomOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x: torch.Tensor) -> Prediction:
        return Prediction(self.body(x))


class DataDependent(nn.Module):
    """Branches on a tensor's value: neither capture path can follow it without data."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            return self.b(h)
        return h


class TwoTower(nn.Module):
    """Two inputs, two encoders, a fused head: layers that are not one chain."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.ModuleList([Block(24) for _ in range(2)])
        self.image = nn.Linear(12, 24)
        self.fuse = nn.Linear(48, 4)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for block in self.text:
            text = block(text)
        return self.fuse(torch.cat([text.mean(1), self.image(image)], dim=-1))


def hf_model(name: str, *, layers: int = 3, hidden: int = 64, device: str = "meta",
             dtype: torch.dtype = torch.float32) -> nn.Module:
    """A small Hugging Face model from its config (no weights are downloaded)."""
    import transformers as T

    heads = max(hidden // 16, 2)
    configs = {
        "gpt2": lambda: T.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=512,
                                     n_positions=256),
        "llama": lambda: T.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden + 32,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       num_key_value_heads=max(heads // 4, 1), vocab_size=512,
                                       max_position_embeddings=256),
        "bert": lambda: T.BertConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     vocab_size=512, max_position_embeddings=256),
    }
    classes = {"gpt2": T.GPT2LMHeadModel, "llama": T.LlamaForCausalLM,
               "bert": T.BertForMaskedLM}
    config = configs[name]()
    config.use_cache = False
    with torch.device(device):
        model = classes[name](config)
    return model.to(dtype)


@cache
def small_gpt_graph(layers: int = 4) -> ModelGraph:
    """A traced bf16 GPT-2 (hidden 512, 8 heads, sequence 512) built on meta: the model the
    solver and plan tests share."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=512, n_layer=layers, n_head=8, vocab_size=8000, n_positions=512,
                        use_cache=False)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    ids = torch.zeros(1, 512, dtype=torch.long)
    return trace(model, (ids,), {"labels": ids})
