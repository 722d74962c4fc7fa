"""One call's failure is that call's alone; an engine that did fail says so.

A row the sampler cannot sample, or a token the engine cannot post-process,
ends its own call with an error while the rest of the batch carries on. Only
a failure of the model step itself stops the engine, and then its
``stats()`` raises, which is what ``/health`` and the router's health check read.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from tests.unit.engine.helpers import (
    assert_block_pool_clean,
    hf_reference,
    random_prompts,
    tiny_engine,
)

from agentrt.engine import AsyncEngine
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.sampling import SamplingState
from agentrt.protocol.engine import (
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)

HUGE_TOP_K = 2**63  # past int64: building the sampler's top_k tensor overflows


def run_to_completion(engine: LLMEngine) -> dict[str, list[TokenEvent]]:
    events: dict[str, list[TokenEvent]] = {}
    while engine.has_unfinished_requests():
        for event in engine.step():
            events.setdefault(event.call_id, []).append(event)
    return events


def tokens(events: list[TokenEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def test_a_row_the_sampler_cannot_sample_ends_its_call_and_no_other() -> None:
    engine = tiny_engine()
    good, bad = random_prompts([9, 7], seed=3)
    engine.add_request("good", good, SamplingParams(temperature=0.0, max_tokens=8))
    engine.add_request("bad", bad, SamplingParams(temperature=1.0, top_k=5, max_tokens=8, n=2))
    for seq_id in ("bad#0", "bad#1"):  # what a top_k that slipped past validation looks like
        state = engine.seqs[seq_id].state
        state.params = msgspec.structs.replace(state.params, top_k=HUGE_TOP_K)

    events = run_to_completion(engine)

    assert tokens(events["good"]) == hf_reference([good], 8)[0]
    assert [e.finish_reason for e in events["bad"]] == ["error", "error"]
    assert events["bad"][-1].usage is not None  # the call is closed like an aborted one
    assert_block_pool_clean(engine)
    engine.add_request("after", good, SamplingParams(temperature=0.0, max_tokens=8))
    assert tokens(run_to_completion(engine)["after"]) == hf_reference([good], 8)[0]


class _ExplodingState(SamplingState):
    """A choice whose bookkeeping fails when it accepts a token."""

    def append(self, token_id: int) -> None:
        raise RuntimeError("bookkeeping failed")


def test_a_token_the_engine_cannot_post_process_ends_its_call_and_no_other() -> None:
    engine = tiny_engine()
    good, bad = random_prompts([5, 6], seed=4)
    engine.add_request("good", good, SamplingParams(temperature=0.0, max_tokens=6))
    engine.add_request("bad", bad, SamplingParams(temperature=0.0, max_tokens=6))
    engine.seqs["bad"].state = _ExplodingState(SamplingParams(temperature=0.0, max_tokens=6))

    events = run_to_completion(engine)

    assert tokens(events["good"]) == hf_reference([good], 6)[0]
    assert [e.finish_reason for e in events["bad"]] == ["error"]
    assert_block_pool_clean(engine)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    eng = AsyncEngine(tiny_engine(num_kv_blocks=128))
    yield eng
    await eng.close()


def request(call_id: str, prompt: list[int], **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(call_id=call_id, prompt=prompt, sampling=SamplingParams(**sampling))


async def collect(engine: AsyncEngine, req: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in engine.generate(req)]


async def test_a_call_that_fails_in_the_step_loop_fails_alone_and_the_engine_serves_on(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The incident: a top_k no int64 holds, let through as the old validation did.
    monkeypatch.setattr("agentrt.engine.llm_engine.validate_sampling_params", lambda *a: None)
    [prompt] = random_prompts([8], seed=5)
    with pytest.raises(EngineError) as failed:
        await collect(engine, request("bad", prompt, temperature=1.0, top_k=HUGE_TOP_K))
    assert failed.value.status == 500
    assert not isinstance(failed.value, EngineUnavailable)

    engine.stats()  # healthy: does not raise
    events = await collect(engine, request("after", prompt, max_tokens=6))
    assert tokens(events) == hf_reference([prompt], 6)[0]
    assert engine.stats().kv_blocks_used == 0


async def test_an_engine_whose_model_failed_reports_itself_unavailable(
    engine: AsyncEngine,
) -> None:
    def broken(batch: Any) -> Any:
        raise RuntimeError("device lost")

    engine.engine.runner.execute = broken  # type: ignore[method-assign]
    [prompt] = random_prompts([8], seed=6)
    with pytest.raises(EngineUnavailable, match="device lost"):
        await collect(engine, request("c1", prompt, max_tokens=4))
    with pytest.raises(EngineUnavailable, match="device lost"):
        engine.stats()
    with pytest.raises(EngineUnavailable):
        await collect(engine, request("c2", prompt, max_tokens=4))


class _ThreadRecordingTokenizer:
    """Encodes a character as its code point modulo the tiny vocabulary; notes the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, text: str) -> list[int]:
        self.threads.append(threading.get_ident())
        return [1 + ord(c) % 200 for c in text]


async def test_prompts_are_tokenized_off_the_event_loop(engine: AsyncEngine) -> None:
    tokenizer = _ThreadRecordingTokenizer()
    engine.engine.tokenizer = tokenizer
    loop_thread = threading.get_ident()
    # Both are refused once tokenized (too long for the tiny model's context), before any step.
    for call_id, prompt in [("long", "x" * 20_000), ("short", "hello")]:
        req = GenerationRequest(
            call_id=call_id, prompt=prompt, sampling=SamplingParams(max_tokens=5000)
        )
        with pytest.raises(EngineError, match="maximum context length"):
            await collect(engine, req)
    assert len(tokenizer.threads) == 2 and loop_thread not in tokenizer.threads
