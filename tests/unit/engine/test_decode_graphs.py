"""Compiled decode steps at static (batch, width) shapes: CUDA graphs on GPU, the same path on CPU.

On CPU the static path runs for real except the capture and replay: the
width buckets, the per-shape input buffers, the results copied out of the
bucket's buffers and the KV write. The tests marked ``cuda`` run the
captured graphs and skip without a GPU. Compiles are slow, so the CPU
tests share one engine and stay at batch bucket 2.
"""

from __future__ import annotations

import msgspec
import pytest
import torch
from tests.conftest import make_tiny_llama
from tests.unit.engine.helpers import (
    assert_block_pool_clean,
    hf_reference,
    random_prompts,
    seq,
    tiny_engine,
)

from agentrt.engine.block_manager import BlockManager
from agentrt.engine.compiled import CompiledDecode, batch_bucket, describe
from agentrt.engine.config import EngineConfig
from agentrt.engine.decode_graphs import width_bucket, width_buckets
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.model_runner import ModelRunner, ScheduledSeq
from agentrt.protocol.engine import SamplingParams

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_width_buckets_are_powers_of_two_capped_at_the_widest_table() -> None:
    assert width_buckets(65) == [2, 4, 8, 16, 32, 64, 65]
    assert width_buckets(64) == [2, 4, 8, 16, 32, 64]
    assert width_buckets(1) == [2]  # a table is never narrower than two columns
    assert [width_bucket(b, 65) for b in (1, 2, 3, 4, 5, 33, 64, 65)] == [
        2,
        2,
        4,
        4,
        8,
        64,
        64,
        65,
    ]
    for blocks in range(1, 66):
        width = width_bucket(blocks, 65)
        assert width >= blocks and width in width_buckets(65)
    with pytest.raises(ValueError, match="wider than the widest"):
        width_bucket(66, 65)
    with pytest.raises(ValueError, match="at least one block"):
        width_bucket(0, 65)


def with_static_shapes(engine: LLMEngine, max_blocks: int | None = None) -> CompiledDecode:
    """Give the engine's runner a compiled decode at static shapes (what CUDA runs, uncaptured)."""
    runner = engine.runner
    assert runner.compiled is not None and runner.decoder is not None
    runner.compiled = CompiledDecode(
        runner.decoder,
        runner.kv_cache,
        max_batch=runner.config.max_num_seqs,
        max_blocks=max_blocks or runner.compiled.max_blocks,
        static_shapes=True,
    )
    return runner.compiled


@pytest.fixture(scope="module")
def static_engine() -> LLMEngine:
    engine = tiny_engine(compile=True)
    with_static_shapes(engine)
    return engine


def test_static_shapes_greedy_equals_transformers_and_the_eager_engine(
    static_engine: LLMEngine,
) -> None:
    # Two rows whose longest context grows from 2 to 8 blocks of 4 tokens: widths 2, 4 and 8.
    prompts = random_prompts([3, 6], seed=21)
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    compiled = static_engine.runner.compiled
    assert compiled is not None and compiled.static is not None
    steps, shapes = compiled.steps, compiled.static.shape_count
    outputs = [o[0] for o in static_engine.generate(prompts, greedy)]
    assert outputs == hf_reference(prompts, 24)
    assert [o[0] for o in tiny_engine().generate(prompts, greedy)] == outputs
    static = compiled.static
    assert compiled.steps - steps == 23  # every decode step ran compiled, all at static shapes
    assert static.steps == compiled.steps
    assert static.graph_replays == 0 and static.graph_count == 0 and not static.cuda_graphs
    stats = static_engine.stats()
    assert (stats.compiled_decode_steps, stats.cuda_graph_replays) == (compiled.steps, 0)
    assert static.shape_count - shapes <= 3  # (2, 2), (2, 4), (2, 8): one per width used
    described = describe(compiled)
    assert described["block_table_widths"] == static.widths == [2, 4, 8, 16, 32, 64, 65]
    assert described["cuda_graphs"] is False and described["static_shapes"] == 7 * 7
    assert_block_pool_clean(static_engine)


def test_a_second_run_reuses_every_shape(static_engine: LLMEngine) -> None:
    compiled = static_engine.runner.compiled
    assert compiled is not None and compiled.static is not None
    greedy = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = random_prompts([2, 5], seed=22)
    static_engine.generate(prompts, greedy)
    shapes = compiled.static.shape_count
    other = random_prompts([4, 7], seed=23)
    outputs = [o[0] for o in static_engine.generate(other, greedy)]
    assert outputs == hf_reference(other, 8)
    assert compiled.static.shape_count == shapes


def decode_logits(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    """Prefill two prompts, then decode ``tokens`` one step each; the stacked step logits."""
    bm = BlockManager(runner.kv_cache.num_blocks, 4, enable_prefix_caching=False)
    seqs = [seq(n, p) for n, p in zip("ab", random_prompts([7, 13], seed=14), strict=True)]
    for s in seqs:
        bm.allocate(s, len(s.token_ids))
    runner.execute([ScheduledSeq(s, len(s.token_ids)) for s in seqs])
    steps = []
    for token in tokens:
        for s in seqs:
            s.num_computed_tokens = len(s.token_ids)
            s.token_ids.append(token)
            bm.allocate(s, len(s.token_ids))
        steps.append(runner.execute([ScheduledSeq(s, 1) for s in seqs]))
    return torch.stack(steps)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_static_step_logits_match_eager_and_outlive_the_next_step(device: str) -> None:
    # Widths 2 and 4 only: contexts of 5 blocks and more run at their exact width instead.
    # The logits of each step are kept until all steps ran: a step's logits must not be
    # the bucket's buffer, which the next step (and on CUDA the next replay) overwrites.
    config = EngineConfig(
        dtype="float32",
        device=device,
        num_kv_blocks=64,
        block_size=4,
        compile=True,
        cuda_graphs=False,  # the runner's own compiled decode is replaced below
        compile_warmup=False,
    )
    eager = ModelRunner(make_tiny_llama(), msgspec.structs.replace(config, compile=False))
    runner = ModelRunner(make_tiny_llama(), config)
    assert runner.compiled is not None and runner.decoder is not None
    runner.compiled = CompiledDecode(
        runner.decoder, runner.kv_cache, max_batch=2, max_blocks=4, static_shapes=True
    )
    tokens = [3, 9, 27, 81, 5, 6, 7, 8]  # contexts from 14 to 21 tokens: 4, then 5 and 6 blocks
    expected = decode_logits(eager, tokens)
    got = decode_logits(runner, tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    static = runner.compiled.static
    assert static is not None and static.widths == [2, 4]
    assert static.steps == 3 and runner.compiled.steps == len(tokens)
    assert static.graph_replays == (3 if device == "cuda" else 0)


def test_warm_up_prepares_every_shape_and_leaves_the_cache_alone() -> None:
    engine = tiny_engine(compile=True, max_num_seqs=2, num_kv_blocks=16)
    compiled = with_static_shapes(engine, max_blocks=5)
    kv = engine.runner.kv_cache.kv
    kv.normal_()
    before = kv.clone()
    assert compiled.warm_up() == [1, 2]
    static = compiled.static
    assert static is not None and static.widths == [2, 4, 5]
    assert static.shape_count == 2 * 3 and static.steps == 0 and compiled.steps == 0
    assert torch.equal(kv, before)  # preparing a shape writes no KV
    kv.zero_()
    prompts = random_prompts([3, 6], seed=24)
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    assert [o[0] for o in engine.generate(prompts, greedy)] == hf_reference(prompts, 4)
    assert static.shape_count == 6 and static.steps == compiled.steps == 3


@cuda
def test_cuda_graph_greedy_equals_eager_on_cuda() -> None:
    prompts = random_prompts([5, 17, 33], seed=11)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (6, 14, 14)]
    # With xformers installed it runs the prompt chunks; decode steps replay the graphs.
    engine = tiny_engine(device="cuda", compile=True, max_num_seqs=4)
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.static is not None and compiled.static.cuda_graphs
    assert describe(compiled)["cuda_graphs"] is True
    outputs = [o[0] for o in engine.generate(prompts, params)]
    eager = tiny_engine(device="cuda", compile=False)
    assert [o[0] for o in eager.generate(prompts, params)] == outputs
    static = compiled.static
    assert compiled.steps == 13 and static.graph_replays == 13  # every decode step replayed
    assert engine.stats().cuda_graph_replays == engine.stats().compiled_decode_steps == 13
    # Three rows, then two (buckets 4 and 2), the longest context 34 to 46 tokens: 9 to 12
    # blocks, all at width 16. One graph per shape used, none per step.
    assert {width_bucket(b, static.max_width) for b in range(9, 13)} == {16}
    assert batch_bucket(3) == 4 and static.graph_count == static.shape_count == 2
    assert_block_pool_clean(engine)


@cuda
def test_cuda_graph_warm_up_captures_every_shape_before_the_first_request() -> None:
    engine = tiny_engine(device="cuda", compile=True, compile_warmup=True, max_num_seqs=2)
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.static is not None
    static = compiled.static
    assert static.graph_count == len(compiled.buckets()) * len(static.widths)
    captured = static.graph_count
    prompts = random_prompts([3, 9], seed=12)
    params = [
        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
    ]
    outputs = [o[0] for o in engine.generate(prompts, params)]
    eager = tiny_engine(device="cuda")
    assert [o[0] for o in eager.generate(prompts, params)] == outputs
    assert static.graph_count == captured and static.graph_replays == compiled.steps == 7
    assert_block_pool_clean(engine)


@cuda
def test_cuda_graphs_under_pressure_free_every_kv_block() -> None:
    prompts = random_prompts([30, 22, 27, 9, 14, 3], seed=15)
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    engine = tiny_engine(device="cuda", compile=True, num_kv_blocks=20, preemption_mode="auto")
    outputs = [o[0] for o in engine.generate(prompts, greedy)]
    stats = engine.stats()
    assert stats.preemptions_swap + stats.preemptions_recompute > 0
    eager = tiny_engine(device="cuda", num_kv_blocks=20, preemption_mode="auto")
    assert [o[0] for o in eager.generate(prompts, greedy)] == outputs
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.static is not None
    assert compiled.static.graph_replays == compiled.steps > 0
    assert_block_pool_clean(engine)


@cuda
def test_compiled_decode_without_cuda_graphs_on_cuda() -> None:
    prompts = random_prompts([5, 17], seed=16)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    engine = tiny_engine(device="cuda", compile=True, cuda_graphs=False)
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.static is None
    assert describe(compiled)["cuda_graphs"] is False
    outputs = [o[0] for o in engine.generate(prompts, greedy)]
    assert [o[0] for o in tiny_engine(device="cuda").generate(prompts, greedy)] == outputs
    assert compiled.steps == 5
