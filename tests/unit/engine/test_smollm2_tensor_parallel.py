"""On the real SmolLM2-135M (fp32), 2 tensor-parallel ranks, or 2 pipeline stages, give one process's greedy tokens.

Slow: loads the real model for each engine (through the loader's cached
GGUF conversion) and starts a worker process. SmolLM2 has 9 query heads
over 3 KV heads, so 2 tensor-parallel ranks hold 2 and 1 KV-head groups (6
and 3 query heads); 2 pipeline stages hold 15 of its 30 layers each. The first run is a plain batch of 20 chat prompts; the second
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


BATCHED: dict[str, Any] = {"num_kv_blocks": 256}
# Room for about four calls at once; the host pool holds about two calls' blocks.
BLOCK_BYTES = 30 * 2 * 16 * 3 * 64 * 4  # SmolLM2: layers, k/v, block, KV heads, head dim
PRESSURE: dict[str, Any] = {
    "num_kv_blocks": 16,
    "preemption_mode": "swap",
    "swap_space": 8 * BLOCK_BYTES,
    "max_num_seqs": 8,
}
SPLITS = [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}]


@pytest.fixture(scope="module")
def one_process() -> dict[str, list[list[int]]]:
    """Each config's single-process outputs, computed once for both splits."""
    outputs = {}
    for name, overrides in (("batched", BATCHED), ("pressure", PRESSURE)):
        one, prompts = engine(**overrides)
        outputs[name] = [o[0] for o in one.generate(prompts, GREEDY)]
    return outputs


def split_run(split: dict[str, int], **overrides: Any) -> tuple[list[list[int]], LLMEngine]:
    """2 ranks' outputs (the engine is closed; its stats stay readable)."""
    two, prompts = engine(**split, **overrides)
    try:
        return [o[0] for o in two.generate(prompts, GREEDY)], two
    finally:
        two.close()


@pytest.mark.parametrize("split", SPLITS, ids=["tp2", "pp2"])
def test_twenty_prompts_batched(split: dict[str, int], one_process: dict[str, Any]) -> None:
    got, _ = split_run(split, **BATCHED)
    assert got == one_process["batched"]
    assert all(len(tokens) == NEW_TOKENS for tokens in got)


@pytest.mark.parametrize("split", SPLITS, ids=["tp2", "pp2"])
def test_twenty_prompts_through_swap_and_recompute(
    split: dict[str, int], one_process: dict[str, Any]
) -> None:
    got, two = split_run(split, **PRESSURE)
    assert got == one_process["pressure"]
    stats = two.stats()
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
