"""On the real SmolLM2-135M (fp32), the engine's greedy tokens equal transformers' ``generate``.

Slow: loads the real model (through the loader's cached GGUF conversion).
One engine run covers mixed prompt lengths in one batch with chunked
prefill and a shared prefix; a second, with a pool too small for the load,
covers swap-out/swap-in and recompute.
"""

from __future__ import annotations

import pytest
from tests.unit.engine.helpers import hf_greedy

from agentrt.engine.chat import encode_chat
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import load_model
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling import SchedulerConfig

# Generous: CI machines are shared; the real model runs about 13 tokens/s per stream in fp32.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each of them is prime, briefly.",
    "Hi",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def smollm2() -> tuple[object, list[list[int]], list[list[int]]]:
    reference = load_model(None, dtype="float32")
    # Compare full-length outputs: neither side stops at EOS (the engine runs with ignore_eos).
    reference.model.generation_config.eos_token_id = None
    tok = reference.tokenizer
    prompts = [encode_chat(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    expected = [hf_greedy(reference.model, p, NEW_TOKENS) for p in prompts]
    return reference, prompts, expected


def engine(**overrides: object) -> LLMEngine:
    loaded = load_model(None, dtype="float32")
    config = EngineConfig(dtype="float32", scheduler=SchedulerConfig(policy="fcfs"), **overrides)  # type: ignore[arg-type]
    return LLMEngine(config, loaded)


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def test_batched_chunked_and_prefix_cached(
    smollm2: tuple[object, list[list[int]], list[list[int]]],
) -> None:
    _, prompts, expected = smollm2
    eng = engine(num_kv_blocks=256, block_size=16, max_num_batched_tokens=48)
    assert [o[0] for o in eng.generate(prompts, GREEDY)] == expected
    # The chat template's system prompt is shared: the second round hits the prefix cache.
    assert [o[0] for o in eng.generate(prompts, GREEDY)] == expected
    assert eng.block_manager.prefix_hit_tokens > 0


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_after_preemption(
    mode: str, smollm2: tuple[object, list[list[int]], list[list[int]]]
) -> None:
    _, prompts, expected = smollm2
    longest = max(len(p) for p in prompts) + NEW_TOKENS
    eng = engine(
        num_kv_blocks=-(-longest // 16) + 2,
        block_size=16,
        preemption_mode=mode,
        enable_prefix_caching=False,
    )
    assert [o[0] for o in eng.generate(prompts, GREEDY)] == expected
    stats = eng.stats()
    assert (stats.preemptions_swap if mode == "swap" else stats.preemptions_recompute) > 0
