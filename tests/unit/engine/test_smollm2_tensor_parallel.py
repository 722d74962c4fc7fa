"""On the real SmolLM2-135M (fp32), 2 tensor-parallel ranks give one process's greedy tokens.

Slow: loads the real model twice (through the loader's cached GGUF
conversion) and starts a worker process. SmolLM2 has 9 query heads over 3
KV heads, so the 2 ranks hold 2 and 1 KV-head groups (6 and 3 query
heads). The first run is a plain batch of 20 chat prompts; the second
shrinks the KV pool so that calls are swapped out and back in, and
recomputed once the host pool is full.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentrt.engine.chat import encode_chat
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import load_model
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling import SchedulerConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NEW_TOKENS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
QUESTIONS = [f"In one sentence, what is special about the number {7 * i + 3}?" for i in range(20)]


def engine(**overrides: Any) -> tuple[LLMEngine, list[list[int]]]:
    loaded = load_model(None, dtype="float32")
    prompts = [encode_chat(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    config = EngineConfig(
        dtype="float32", block_size=16, scheduler=SchedulerConfig(policy="fcfs"), **overrides
    )
    return LLMEngine(config, loaded), prompts


def both(**overrides: Any) -> tuple[list[list[int]], list[list[int]], LLMEngine]:
    """One process's outputs, then 2 ranks' (the engine is closed; its stats stay readable)."""
    one, prompts = engine(**overrides)
    expected = [o[0] for o in one.generate(prompts, GREEDY)]
    two, _ = engine(tensor_parallel_size=2, **overrides)
    try:
        got = [o[0] for o in two.generate(prompts, GREEDY)]
    finally:
        two.close()
    return expected, got, two


def test_twenty_prompts_batched() -> None:
    expected, got, _ = both(num_kv_blocks=256)
    assert got == expected
    assert all(len(tokens) == NEW_TOKENS for tokens in got)


def test_twenty_prompts_through_swap_and_recompute() -> None:
    # Room for about four calls at once; the host pool holds about two calls' blocks.
    block_bytes = 30 * 2 * 16 * 3 * 64 * 4  # SmolLM2: layers, k/v, block, KV heads, head dim
    expected, got, two = both(
        num_kv_blocks=16, preemption_mode="swap", swap_space=8 * block_bytes, max_num_seqs=8
    )
    assert got == expected
    stats = two.stats()
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
