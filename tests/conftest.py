"""Shared fixtures: a tiny randomly initialised Llama (float32, seeded), built in code.

Nothing here downloads anything. ``make_tiny_llama`` returns a fresh model
each call (same seed, same weights), so a test can hand one copy to the
engine (which switches its attention implementation) and keep another for
transformers' own ``generate`` as the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_VOCAB = 256
TINY_MAX_LEN = 1024


def make_tiny_llama(seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_LEN,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    # Widen the random logits so greedy choices are not decided by rounding noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def make_tiny_loaded(seed: int = 0, eos_token_ids: frozenset[int] = frozenset()) -> Any:
    """The tiny Llama wrapped like the loader wraps a real model (no tokenizer)."""
    import torch

    from agentrt.engine.loader import LoadedModel

    return LoadedModel(
        model=make_tiny_llama(seed),
        tokenizer=None,
        name="tiny-llama",
        eos_token_ids=eos_token_ids,
        max_model_len=TINY_MAX_LEN,
        dtype=torch.float32,
        device=torch.device("cpu"),
        path=Path("."),
    )


@pytest.fixture
def tiny_llama() -> Any:
    return make_tiny_llama()


@pytest.fixture
def tiny_loaded_factory() -> Callable[..., Any]:
    return make_tiny_loaded
