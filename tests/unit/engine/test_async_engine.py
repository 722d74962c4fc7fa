"""AsyncEngine: the EngineClient the server talks to.

The model computes in a worker thread: the event loop keeps running while it
does, tokens stream before a call completes, leaving a stream early aborts
the call and frees its KV, and bad requests fail at the first ``__anext__``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from tests.unit.engine.helpers import (
    assert_block_pool_clean,
    hf_reference,
    make_tiny_loaded,
    random_prompts,
    tiny_engine,
)

import agentrt.engine.async_engine as async_engine_module
from agentrt.engine import AsyncEngine
from agentrt.engine.config import EngineConfig
from agentrt.protocol.engine import (
    EngineClient,
    EngineUnavailable,
    GenerationRequest,
    InvalidRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    eng = AsyncEngine(tiny_engine(num_kv_blocks=128))
    yield eng
    await eng.close()


def request(call_id: str, prompt: list[int], **sampling: object) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(call_id=call_id, prompt=prompt, sampling=SamplingParams(**sampling))  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    return [event async for event in stream]


def test_it_is_an_engine_client() -> None:
    assert issubclass(AsyncEngine, EngineClient)


async def test_as_a_context_manager_it_serves_in_the_block_and_is_closed_after() -> None:
    async with AsyncEngine(tiny_engine(num_kv_blocks=128)) as eng:
        events = await collect(eng.generate(request("c1", [5, 6, 7], max_tokens=2)))
        assert events[-1].finish_reason == "length"
    assert not eng._thread.is_alive()
    with pytest.raises(EngineUnavailable, match="shut down"):
        await collect(eng.generate(request("c2", [5, 6, 7], max_tokens=2)))


async def test_streams_greedy_tokens_with_usage_and_timings_on_the_last_event(
    engine: AsyncEngine,
) -> None:
    [prompt] = random_prompts([21], seed=11)
    events = await collect(engine.generate(request("c1", prompt, max_tokens=10)))
    assert [t for e in events for t in e.token_ids] == hf_reference([prompt], 10)[0]
    assert len(events) == 10  # one event per decode step
    assert [e.finish_reason for e in events] == [None] * 9 + ["length"]
    last = events[-1]
    assert (
        last.usage is not None
        and last.usage.prompt_tokens == 21
        and last.usage.completion_tokens == 10
    )
    assert last.timings is not None and last.timings.first_token is not None
    assert last.timings.model_time > 0
    assert_block_pool_clean(engine.engine)


async def test_event_loop_stays_responsive_and_tokens_arrive_before_completion(
    engine: AsyncEngine,
) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    prompts = random_prompts([40, 50, 60, 70], seed=12)
    ticker_task = asyncio.create_task(ticker())
    still_running_at_first_token: list[bool] = []
    ticks_at_first: int | None = None
    async for _event in engine.generate(request("long", prompts[0], max_tokens=120)):
        if ticks_at_first is None:
            ticks_at_first = ticks
            still_running_at_first_token.append("long" in engine.engine.requests)
    stop.set()
    await ticker_task
    assert still_running_at_first_token == [True]  # the first token came while the call ran on
    assert ticks_at_first is not None and ticks - ticks_at_first >= 10  # the loop ran meanwhile


async def test_concurrent_calls_get_their_own_tokens(engine: AsyncEngine) -> None:
    prompts = random_prompts([5, 17, 33, 9], seed=13)
    results = await asyncio.gather(
        *(
            collect(engine.generate(request(f"c{i}", p, max_tokens=8)))
            for i, p in enumerate(prompts)
        )
    )
    got = [[t for e in events for t in e.token_ids] for events in results]
    assert got == hf_reference(prompts, 8)
    assert all(e.call_id == f"c{i}" for i, events in enumerate(results) for e in events)


async def test_n_choices_arrive_with_their_index(engine: AsyncEngine) -> None:
    [prompt] = random_prompts([12], seed=14)
    events = await collect(
        engine.generate(request("n3", prompt, max_tokens=5, n=3, temperature=1.0, seed=7))
    )
    by_index: dict[int, list[int]] = {}
    for e in events:
        by_index.setdefault(e.index, []).extend(e.token_ids)
    assert sorted(by_index) == [0, 1, 2] and all(len(v) == 5 for v in by_index.values())
    assert len({tuple(v) for v in by_index.values()}) > 1  # seeds differ per choice
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 15
    assert sum(e.finish_reason is not None for e in events) == 3


async def test_leaving_the_stream_early_aborts_the_call_and_frees_its_blocks(
    engine: AsyncEngine,
) -> None:
    [prompt] = random_prompts([30], seed=15)
    stream = engine.generate(request("quit", prompt, max_tokens=200))
    first = await stream.__anext__()
    assert first.token_ids
    await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(200):
        if not engine.engine.requests:
            break
        await asyncio.sleep(0.01)
    assert_block_pool_clean(engine.engine)


async def test_abort_ends_the_consumers_stream_with_abort(engine: AsyncEngine) -> None:
    [prompt] = random_prompts([30], seed=16)
    stream = engine.generate(request("victim", prompt, max_tokens=400))
    events = [await stream.__anext__()]
    await engine.abort("victim")
    events += [e async for e in stream]
    assert events[-1].finish_reason == "abort"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens >= 1
    await asyncio.sleep(0)
    assert_block_pool_clean(engine.engine)


async def test_prompt_longer_than_the_context_raises_at_first_anext(engine: AsyncEngine) -> None:
    stream = engine.generate(request("big", [1] * 5000, max_tokens=4))
    with pytest.raises(PromptTooLong) as info:
        await stream.__anext__()
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    assert not engine.engine.requests


async def test_bad_sampling_parameters_raise_invalid_request(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequest) as info:
        await engine.generate(request("bad", [1, 2, 3], top_p=0.0)).__anext__()
    assert info.value.param == "top_p"
    with pytest.raises(InvalidRequest):
        await engine.generate(request("text", "hello")).__anext__()  # type: ignore[arg-type]  # no tokenizer
    with pytest.raises(InvalidRequest):
        await engine.generate(request("oov", [1, 99999])).__anext__()


async def test_stats_and_programs(engine: AsyncEngine) -> None:
    await engine.start_program(ProgramTag(program_id="prog-1"))
    [prompt] = random_prompts([10], seed=17)
    req = GenerationRequest(
        call_id="p1",
        prompt=prompt,
        sampling=SamplingParams(temperature=0.0, max_tokens=3),
        program=ProgramTag(program_id="prog-1", thread_id="t0"),
    )
    await collect(engine.generate(req))
    await asyncio.sleep(0.05)
    entry = engine.engine.scheduler.table.get("prog-1")
    assert entry is not None and entry.service > 0  # the call's model time counts for its program
    await engine.end_program("prog-1")
    for _ in range(100):
        if engine.engine.scheduler.table.get("prog-1") is None:
            break
        await asyncio.sleep(0.01)
    assert engine.engine.scheduler.table.get("prog-1") is None
    stats = engine.stats()
    assert stats.generated_tokens >= 3 and stats.kv_blocks_total == 128 and stats.running == 0
    [model] = engine.models()
    assert model.id == "tiny-llama" and model.max_model_len == 128 * 4


async def test_start_builds_the_engine_on_the_thread_that_steps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One thread runs every torch operation: a second OpenMP team alive in the process
    # (the loading thread's) would slow every parallel region of the stepping thread.
    built_on: list[str] = []
    real = async_engine_module.LLMEngine

    def recording(config: EngineConfig | None, loaded: object) -> object:
        built_on.append(threading.current_thread().name)
        return real(config, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(async_engine_module, "LLMEngine", recording)
    config = EngineConfig(dtype="float32", num_kv_blocks=64, block_size=4, compile_warmup=False)
    eng = await AsyncEngine.start(config, make_tiny_loaded())
    try:
        assert built_on == ["agentrt-engine"] == [eng._thread.name]
        events = await collect(eng.generate(request("c1", [5, 6, 7], max_tokens=2)))
        assert events[-1].finish_reason == "length"
    finally:
        await eng.close()


async def test_start_raises_what_building_the_engine_raised() -> None:
    with pytest.raises(Exception, match="no-such-model"):
        await AsyncEngine.start(EngineConfig(model="/no-such-model/weights.safetensors"))
