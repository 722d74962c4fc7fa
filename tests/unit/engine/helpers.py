"""Reference outputs for the engine tests: transformers' own greedy ``generate``."""

from __future__ import annotations

import os
from typing import Any

import torch
from tests.conftest import make_tiny_llama, make_tiny_loaded

from agentrt.engine.config import EngineConfig
from agentrt.engine.kv_cache import PagedKVCache
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.sampling import SamplingState
from agentrt.engine.sequence import Sequence
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling import SchedulerConfig
from agentrt.scheduling.call import Call


def random_prompts(lengths: list[int], seed: int = 1, vocab: int = 256) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' ``generate`` (greedy, its own KV cache), one prompt at a time."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return list(out[0, len(prompt) :].tolist())


def hf_reference(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    model = make_tiny_llama()
    return [hf_greedy(model, p, max_new_tokens) for p in prompts]


def tiny_engine(**overrides: Any) -> LLMEngine:
    """An fp32 engine on the tiny Llama; ``overrides`` are EngineConfig fields.

    ``AGENTRT_TEST_DEVICE=cuda`` runs these engines on a GPU (the suite's CUDA check)."""
    overrides.setdefault("device", engine_test_device())
    overrides.setdefault("dtype", "float32")
    overrides.setdefault("num_kv_blocks", 64)
    overrides.setdefault("block_size", 4)
    overrides.setdefault("compile_warmup", False)  # tests compile only the buckets they use
    scheduler = overrides.pop("scheduler", SchedulerConfig(policy="fcfs"))
    return LLMEngine(EngineConfig(scheduler=scheduler, **overrides), make_tiny_loaded())


def assert_block_pool_clean(engine: LLMEngine) -> None:
    """Every block is back in the free pool and nothing is left in the host pool."""
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert all(count == 0 for count in bm.ref_counts)
    assert engine.swap_pool.num_free_blocks == engine.swap_pool.num_blocks
    assert not engine.seqs and not engine.requests


def seq(name: str, tokens: list[int]) -> Sequence:
    """A prompt-only sequence for driving the model runner directly."""
    return Sequence(
        seq_id=name,
        request_id=name,
        index=0,
        token_ids=tokens,
        num_prompt_tokens=len(tokens),
        state=SamplingState(SamplingParams()),
        max_tokens=4,
        arrival=0.0,
        call=Call(name, name),
    )


def engine_test_device() -> str:
    """Where the engine tests' engines and caches run: ``AGENTRT_TEST_DEVICE``, else the CPU."""
    return os.environ.get("AGENTRT_TEST_DEVICE", "cpu")


def small_kv_cache(num_blocks: int = 8, device: str = "cpu") -> PagedKVCache:
    """A float32 cache of 3 layers, blocks of 4 tokens, 2 KV heads of dim 8, filled at random."""
    cache = PagedKVCache(
        num_layers=3,
        num_blocks=num_blocks,
        block_size=4,
        num_kv_heads=2,
        head_dim=8,
        dtype=torch.float32,
        device=device,
    )
    cache.kv.copy_(torch.randn_like(cache.kv))
    return cache
