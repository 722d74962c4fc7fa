"""Small models built in code for tests and ``agentrt plan --model tiny-llama|tiny-gpt``, and the LM wrappers.

A plan is captured from a wrapper that ends in the value wanted: the logits
(for a forward check) or the loss (for a training step).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def tiny_llama(
    seed: int = 0, *, vocab: int = 256, layers: int = 2, tied: bool = False
) -> nn.Module:
    """A random Llama (GQA, rotary, RMSNorm, SwiGLU) small enough for a unit test (``tied``: LM head = embedding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model: nn.Module = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.ln1(x)
        q, k, v = (
            proj(h).view(b, s, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return out


class TinyGPT(nn.Module):
    """A GPT-style decoder: learned positions, LayerNorm, biased linears, GELU MLP, causal SDPA."""

    def __init__(
        self, vocab: int = 256, dim: int = 64, heads: int = 4, layers: int = 2, max_len: int = 128
    ) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln(x))
        return logits


def tiny_gpt(seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return TinyGPT(**kwargs).eval()


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = (
        model(input_ids=input_ids, use_cache=False)
        if hasattr(model, "config")
        else model(input_ids)
    )
    logits: torch.Tensor = out.logits if hasattr(out, "logits") else out
    return logits


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / labels.numel()


class Logits(nn.Module):
    """``input_ids -> logits`` for any causal LM (transformers or a module returning logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _logits(self.model, input_ids)


class NextTokenLoss(nn.Module):
    """``(input_ids, labels) -> mean cross-entropy`` over every position.

    Written as a sum over rows divided by their count so that a batch split
    leaves each device a partial sum (a mean over a chunk would not be one).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = _logits(self.model, input_ids)
        return (
            F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            / labels.numel()
        )


class LossAndLogits(nn.Module):
    """``(input_ids, labels) -> (loss, logits)``: one capture checks both the step and the forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _logits(self.model, input_ids)
        return _loss(logits, labels), logits


def tiny_llama_tied(seed: int = 0) -> nn.Module:
    return tiny_llama(seed, tied=True)


def tiny_llama_big_vocab(seed: int = 0) -> nn.Module:
    """A deep tiny Llama whose tied vocabulary table (16384 x 64) outweighs its 16 layers (37K
    weights each): the shape where the embedding and the head decide a plan's memory."""
    return tiny_llama(seed, vocab=16384, layers=16, tied=True)


def tiny_llama_huge_vocab(seed: int = 0) -> nn.Module:
    """A tiny Llama whose tied 65536 x 64 vocabulary table (16 MiB) outweighs its 8 layers fourteen times:
    the head and its loss are most of a training step's arithmetic, as in a small model with a
    large tokenizer's vocabulary."""
    return tiny_llama(seed, vocab=65536, layers=8, tied=True)


def llama_8b_meta(seed: int = 0) -> nn.Module:
    """Llama-3-8B's shape (32 layers, 4096 wide, GQA 32/8 heads, 128256 vocabulary) on the meta device.

    No weights exist, so it can be planned (``agentrt plan --profile ...``) but not run.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model: nn.Module = LlamaForCausalLM(config)
        return model.to(torch.bfloat16).eval()


BUILTIN = {
    "tiny-llama": tiny_llama,
    "tiny-gpt": tiny_gpt,
    "tiny-llama-tied": tiny_llama_tied,
    "tiny-llama-big-vocab": tiny_llama_big_vocab,
    "tiny-llama-huge-vocab": tiny_llama_huge_vocab,
    "llama-8b": llama_8b_meta,
}
