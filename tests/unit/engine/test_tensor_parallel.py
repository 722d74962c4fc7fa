"""The engine over 2 gloo processes (tensor parallel, or 2 pipeline stages) gives one process's greedy tokens.

Each engine start spawns one worker process (a few seconds), so the tests
share engines where they can. The reference is the same engine config on
one process: the scheduler's decisions (preemption, swap, recompute) do not
depend on the model's split, so the token streams must be equal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tests.unit.engine.helpers import assert_block_pool_clean, random_prompts, tiny_engine

from agentrt.config import ConfigError
from agentrt.engine.async_engine import AsyncEngine
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.tensor_parallel import KVCopy, StepRow, decode_step, encode_step
from agentrt.parallelism.errors import ParallelError, PlanError
from agentrt.parallelism.serving import megatron_split
from agentrt.protocol.engine import GenerationRequest, SamplingParams
from agentrt.scheduling import SchedulerConfig

pytestmark = pytest.mark.timeout(300)

GREEDY = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
PRESSURE = {
    "num_kv_blocks": 24,
    "block_size": 4,
    "preemption_mode": "swap",  # swap while the host pool has room, then recompute
    "swap_space": 12 * 2 * 2 * 4 * 2 * 16 * 4,  # twelve blocks of the tiny model's KV
    # LAS: every new call outranks the running ones, so the small pool forces preemptions.
    "scheduler": SchedulerConfig(policy="las", service_unit="tokens"),
}
PROMPTS = random_prompts([40, 35, 30, 25, 20, 45, 38, 28, 3, 1], seed=21)


def test_split_is_by_whole_kv_groups_and_uneven_when_it_must_be() -> None:
    even = megatron_split(num_heads=4, num_kv_heads=2, intermediate_size=128, n=2)
    assert [(s.heads, s.kv_heads, s.mlp) for s in even] == [
        ((0, 2), (0, 1), (0, 64)),
        ((2, 4), (1, 2), (64, 128)),
    ]
    smollm2 = megatron_split(num_heads=9, num_kv_heads=3, intermediate_size=1536, n=2)
    assert [(s.heads, s.kv_heads, s.mlp) for s in smollm2] == [
        ((0, 6), (0, 2), (0, 768)),
        ((6, 9), (2, 3), (768, 1536)),
    ]
    with pytest.raises(PlanError, match="intermediate_size 96"):
        megatron_split(num_heads=4, num_kv_heads=4, intermediate_size=96, n=4)
    with pytest.raises(PlanError, match="num_key_value_heads"):
        megatron_split(num_heads=9, num_kv_heads=3, intermediate_size=1536, n=4)


def test_mlp_split_keeps_int4_groups_whole() -> None:
    parts = megatron_split(num_heads=8, num_kv_heads=4, intermediate_size=96, n=2)
    assert [s.mlp for s in parts] == [(0, 64), (64, 96)]
    assert all((s.mlp[1] - s.mlp[0]) % 32 == 0 for s in parts)


def test_step_message_round_trips() -> None:
    rows = [
        StepRow(num_tokens=1, start=7, block_table=[3, 4], samples=True, tokens=[11]),
        StepRow(num_tokens=3, start=0, block_table=[5], samples=False, tokens=[1, 2, 3]),
    ]
    copies = [KVCopy(0, 2, [3, 4]), KVCopy(1, 0, [9])]
    assert decode_step(encode_step(rows, True, copies)) == (rows, True, copies)
    assert decode_step(encode_step([], False, [])) == ([], False, [])


def test_bad_sizes_are_config_errors_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="cannot both be > 1"):
        EngineConfig(tensor_parallel_size=2, pipeline_parallel_size=2)
    with pytest.raises(ConfigError, match="pipeline_parallel_size must be >= 1"):
        EngineConfig(pipeline_parallel_size=0)
    with pytest.raises(ConfigError, match="compile = false"):
        EngineConfig(tensor_parallel_size=2, compile=True)
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)
    # The tiny Llama has 2 KV heads: 3 ranks cannot each hold one; no worker is started.
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        tiny_engine(tensor_parallel_size=3)
    with pytest.raises(ConfigError, match="2 layers \\(num_hidden_layers\\)"):
        tiny_engine(pipeline_parallel_size=3)


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    engine = tiny_engine(**PRESSURE)
    outputs = [o[0] for o in engine.generate(PROMPTS, GREEDY)]
    stats = engine.stats()
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
    return outputs


@pytest.fixture(scope="module")
def tp_engine() -> Iterator[LLMEngine]:
    engine = tiny_engine(tensor_parallel_size=2, **PRESSURE)
    yield engine
    engine.close()


def test_two_ranks_match_one_process_through_swap_and_recompute(
    tp_engine: LLMEngine, reference: list[list[int]]
) -> None:
    assert [o[0] for o in tp_engine.generate(PROMPTS, GREEDY)] == reference
    stats = tp_engine.stats()
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
    assert_block_pool_clean(tp_engine)


def test_two_pipeline_stages_match_one_process_through_swap_and_recompute(
    reference: list[list[int]],
) -> None:
    engine = tiny_engine(pipeline_parallel_size=2, **PRESSURE)
    try:
        assert engine.runner.kv_cache.num_layers == 1  # of the tiny Llama's 2
        assert [o[0] for o in engine.generate(PROMPTS, GREEDY)] == reference
        stats = engine.stats()
        assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
    finally:
        engine.close()


def test_each_rank_holds_its_share_of_the_kv_heads(tp_engine: LLMEngine) -> None:
    runner = tp_engine.runner
    assert runner.kv_cache.num_kv_heads == 1  # of the tiny Llama's 2
    assert runner.decoder is not None and runner.decoder.num_heads == 2


def test_a_dead_worker_is_a_clear_error_not_a_hang() -> None:
    engine = tiny_engine(tensor_parallel_size=2)
    worker = engine.runner.ranks._context.processes[0]  # type: ignore[attr-defined, union-attr]
    worker.kill()
    worker.join(timeout=30)
    with pytest.raises(ParallelError, match=r"worker rank 1 of 2 exited with code -9"):
        engine.generate(PROMPTS[:2], SamplingParams(temperature=0.0, max_tokens=2))
    engine.close()


async def test_streaming_and_prefix_hits_through_the_async_engine(
    reference: list[list[int]],
) -> None:
    engine = tiny_engine(tensor_parallel_size=2, **PRESSURE)
    workers = list(engine.runner.ranks._context.processes)  # type: ignore[attr-defined]
    async with AsyncEngine(engine) as served:
        for call_id in ("first", "again"):  # the second call reads the first's cached prompt
            chunks: list[list[int]] = []
            async for event in served.generate(
                GenerationRequest(call_id=call_id, prompt=PROMPTS[0], sampling=GREEDY)
            ):
                chunks.append(event.token_ids)
            assert len([c for c in chunks if c]) > 1  # streamed, not delivered at the end
            assert [t for c in chunks for t in c] == reference[0]
        assert engine.block_manager.prefix_hit_tokens >= 36
    # Closing the async engine stopped the workers, and they left cleanly.
    assert [p.exitcode for p in workers] == [0]
    assert engine.runner.ranks._context is None  # type: ignore[attr-defined]
    engine.close()  # idempotent


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="NCCL tensor parallel needs 2 GPUs (one per rank)",
)
def test_two_gpus_over_nccl_match_one_gpu() -> None:
    prompts = random_prompts([12, 5, 30], seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    one = tiny_engine(device="cuda")
    expected = one.generate(prompts, params)
    two = tiny_engine(device="cuda", tensor_parallel_size=2)
    try:
        assert two.runner.ranks.collectives.data is not two.runner.ranks.collectives.control  # type: ignore[attr-defined, union-attr]
        assert two.generate(prompts, params) == expected
    finally:
        two.close()
