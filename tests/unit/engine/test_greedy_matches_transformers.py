"""The batched engine's greedy output equals transformers' ``generate``, token for token.

Every path that changes how a sequence's KV comes to be (mixed lengths in one
flattened batch, chunked prefill, prefix-cache hits, swap-out/swap-in,
recompute, multi-step scheduling) must leave the tokens unchanged.
"""

from __future__ import annotations

from tests.unit.engine.helpers import hf_reference, random_prompts, tiny_engine

from agentrt.protocol.engine import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
LENGTHS = [5, 17, 33, 64, 1, 8]


def test_mixed_prompt_lengths_in_one_batch() -> None:
    prompts = random_prompts(LENGTHS)
    engine = tiny_engine()
    outputs = engine.generate(prompts, GREEDY)
    assert [o[0] for o in outputs] == hf_reference(prompts, 12)
    assert engine.stats().steps == 12  # every prompt prefilled in the first step: one batch


def test_chunked_prefill_with_a_small_token_budget() -> None:
    prompts = random_prompts(LENGTHS, seed=2)
    engine = tiny_engine(max_num_batched_tokens=7)
    outputs = engine.generate(prompts, GREEDY)
    assert [o[0] for o in outputs] == hf_reference(prompts, 12)
    assert engine.stats().steps > 12 + sum(LENGTHS) // 7 - 1


def test_after_a_prefix_cache_hit() -> None:
    [shared] = random_prompts([40], seed=3)
    first, second = [*shared, 7, 8, 9], [*shared, 11, 12]
    engine = tiny_engine()
    out_first = engine.generate([first], GREEDY)[0][0]
    out_second = engine.generate([second], GREEDY)[0][0]
    assert engine.block_manager.prefix_hit_tokens == 40  # ten full 4-token blocks reused
    assert [out_first, out_second] == hf_reference([first, second], 12)


def test_after_swap_out_and_swap_in() -> None:
    prompts = random_prompts([30, 22, 27, 9], seed=4)
    engine = tiny_engine(num_kv_blocks=20, preemption_mode="swap")
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    stats = engine.stats()
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute == 0
    assert [o[0] for o in outputs] == hf_reference(prompts, 24)


def test_after_recompute() -> None:
    prompts = random_prompts([30, 22, 27, 9], seed=5)
    engine = tiny_engine(num_kv_blocks=20, preemption_mode="recompute")
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    stats = engine.stats()
    assert stats.preemptions_recompute > 0 and stats.preemptions_swap == 0
    assert [o[0] for o in outputs] == hf_reference(prompts, 24)


def test_recompute_when_the_host_pool_is_full() -> None:
    prompts = random_prompts([30, 22, 27, 9], seed=6)
    engine = tiny_engine(num_kv_blocks=20, preemption_mode="swap", swap_space=0)
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    stats = engine.stats()
    assert stats.preemptions_recompute > 0 and stats.preemptions_swap == 0
    assert [o[0] for o in outputs] == hf_reference(prompts, 24)


def test_multi_step_scheduling() -> None:
    prompts = random_prompts(LENGTHS, seed=7)
    engine = tiny_engine(num_scheduler_steps=4, num_kv_blocks=24)
    outputs = engine.generate(prompts, GREEDY)
    assert [o[0] for o in outputs] == hf_reference(prompts, 12)
