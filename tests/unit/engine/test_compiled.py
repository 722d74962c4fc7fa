"""The compiled decode step (``EngineConfig.compile``) on the tiny Llama, for real.

Each test compiles through inductor (C++ code generation), cached on disk
under ``$AGENTRT_CACHE_DIR/inductor``; graphs are reused across the engines of
one test process as long as the model's shapes and the bucket match. The
default suite compiles one graph (the tiny Llama at batch bucket 2); the
tests marked slow add the other buckets.
"""

from __future__ import annotations

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
from agentrt.engine.compiled import batch_bucket, compile_count
from agentrt.engine.config import EngineConfig
from agentrt.engine.model_runner import ModelRunner, ScheduledSeq
from agentrt.protocol.engine import SamplingParams


def test_batch_buckets_are_powers_of_two() -> None:
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 17, 32, 33)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        32,
        32,
        64,
    ]
    with pytest.raises(ValueError, match="at least one row"):
        batch_bucket(0)


@pytest.mark.slow
def test_compiled_greedy_equals_transformers_and_the_eager_engine() -> None:
    # Three rows (bucket 4) until the shortest request finishes, then two (bucket 2); contexts
    # cross several 4-token blocks, so the dynamic block-table width grows during the run.
    prompts = random_prompts([5, 17, 33], seed=11)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (6, 14, 14)]
    engine = tiny_engine(compile=True)
    assert engine.runner.compiled is not None
    before = compile_count()
    outputs = [o[0] for o in engine.generate(prompts, params)]
    reference = hf_reference(prompts, 14)
    assert outputs == [reference[0][:6], reference[1], reference[2]]
    assert engine.runner.compiled.steps == 13  # every decode step ran compiled
    eager = tiny_engine(compile=False)
    assert eager.runner.compiled is None
    assert [o[0] for o in eager.generate(prompts, params)] == outputs
    assert compile_count() - before <= 2  # one graph per bucket, none per step or length
    assert_block_pool_clean(engine)


def test_a_second_batch_of_the_same_bucket_does_not_recompile() -> None:
    engine = tiny_engine(compile=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    first = random_prompts([3, 9], seed=12)
    outputs = [o[0] for o in engine.generate(first, greedy)]
    assert outputs == hf_reference(first, 5)
    after_first = compile_count()
    second = random_prompts([21, 30], seed=13)  # longer contexts: a wider block table
    engine.generate(second, greedy)
    assert compile_count() == after_first
    assert engine.runner.compiled is not None and engine.runner.compiled.steps == 8
    stats = engine.stats()
    assert (stats.compiled_decode_steps, stats.cuda_graph_replays) == (8, 0)


def test_a_kv_pool_of_another_size_reuses_the_graph() -> None:
    # The pool's size follows the memory free at start-up, so it must not be in the graph:
    # a server restarted with another pool loads its kernels instead of compiling again.
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    prompts = random_prompts([3, 9], seed=12)
    expected = [o[0] for o in tiny_engine(compile=True, num_kv_blocks=64).generate(prompts, greedy)]
    after_first = compile_count()
    other = tiny_engine(compile=True, num_kv_blocks=40)
    assert [o[0] for o in other.generate(prompts, greedy)] == expected
    assert compile_count() == after_first
    assert other.runner.compiled is not None and other.runner.compiled.steps == 4


def test_warm_up_compiles_every_bucket_before_the_first_request() -> None:
    before = compile_count()
    engine = tiny_engine(compile=True, compile_warmup=True, max_num_seqs=2)
    compiled = engine.runner.compiled
    assert compiled is not None and compiled.buckets() == [1, 2]
    assert compile_count() - before <= 2 and compiled.steps == 0
    warm = compile_count()
    greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    prompts = random_prompts([3, 9], seed=12)
    # Two rows, then one once the first request finishes: both buckets, no new graph.
    params = [greedy, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)]
    outputs = [o[0] for o in engine.generate(prompts, params)]
    reference = hf_reference(prompts, 8)
    assert outputs == [reference[0][:5], reference[1]]
    assert compile_count() == warm and compiled.steps == 7
    assert_block_pool_clean(engine)


def test_contexts_inside_one_block_run_compiled() -> None:
    # Every position stays in the first 4-token block: the table still has a dynamic width.
    engine = tiny_engine(compile=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    prompts = random_prompts([1, 2], seed=14)
    assert [o[0] for o in engine.generate(prompts, greedy)] == hf_reference(prompts, 2)
    assert engine.runner.compiled is not None and engine.runner.compiled.steps == 1
    assert_block_pool_clean(engine)


def test_compiled_decode_logits_match_the_eager_forward_in_float32() -> None:
    logits = []
    for compile in (True, False):
        runner = ModelRunner(
            make_tiny_llama(),
            EngineConfig(
                dtype="float32",
                num_kv_blocks=64,
                block_size=4,
                compile=compile,
                compile_warmup=False,  # only bucket 2 runs
            ),
        )
        assert (runner.compiled is not None) == compile
        bm = BlockManager(64, 4, enable_prefix_caching=False)
        seqs = [seq(n, p) for n, p in zip("ab", random_prompts([7, 13], seed=14), strict=True)]
        for s in seqs:
            bm.allocate(s, len(s.token_ids))
        runner.execute([ScheduledSeq(s, len(s.token_ids)) for s in seqs])
        steps = []
        for token in (3, 9, 27):  # the second step crosses into a new block for both
            for s in seqs:
                s.num_computed_tokens = len(s.token_ids)
                s.token_ids.append(token)
                bm.allocate(s, len(s.token_ids))
            steps.append(runner.execute([ScheduledSeq(s, 1) for s in seqs]))
        logits.append(torch.stack(steps))
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_under_pressure_every_kv_block_is_freed() -> None:
    prompts = random_prompts([30, 22, 27, 9, 14, 3], seed=15)
    engine = tiny_engine(compile=True, num_kv_blocks=20, preemption_mode="auto")
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24))
    stats = engine.stats()
    assert stats.preemptions_swap + stats.preemptions_recompute > 0
    assert [o[0] for o in outputs] == hf_reference(prompts, 24)
    assert_block_pool_clean(engine)


def test_the_step_buffer_widens_for_a_context_past_the_planned_length() -> None:
    engine = tiny_engine(compile=True)
    decode = engine.runner.compiled
    assert decode is not None
    planned = decode.max_blocks
    assert decode.buffer(2, planned).shape == (2, 2 + planned)
    assert decode.buffer(2, planned + 3).shape == (2, 2 + planned + 3)
    assert decode.max_blocks == planned + 3


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_compiled_quantized_decode_equals_the_eager_quantized_engine(quantization: str) -> None:
    prompts = random_prompts([5, 9], seed=17)
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    runs = [
        [o[0] for o in tiny_engine(quantization=quantization, compile=c).generate(prompts, greedy)]
        for c in (True, False)
    ]
    assert runs[0] == runs[1]


def test_few_row_decode_steps_run_on_decode_threads_and_the_rest_on_all() -> None:
    threads = torch.get_num_threads()
    try:
        engine = tiny_engine(num_threads=2, decode_threads=1, max_num_seqs=16)
        runner = engine.runner
        assert runner.step_threads(1, decode_only=True) == 1
        assert runner.step_threads(8, decode_only=True) == 1
        assert runner.step_threads(9, decode_only=True) == 2
        assert runner.step_threads(1, decode_only=False) == 2  # a prompt chunk
        greedy = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
        prompts = random_prompts([3, 9], seed=12)
        assert [o[0] for o in engine.generate(prompts, greedy)] == hf_reference(prompts, 5)
        assert torch.get_num_threads() == 1  # the last step decoded one row
        one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        engine.generate(random_prompts([6], seed=13), one)  # a prefill step only
        assert torch.get_num_threads() == 2
        assert tiny_engine(num_threads=2).runner.step_threads(1, decode_only=True) == 2
    finally:
        torch.set_num_threads(threads)
