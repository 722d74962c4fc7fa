"""The echo engine as a stand-in for a real one: ``ignore_eos`` decodes to ``max_tokens``, and its
per-token delay keeps a call's length whatever the host does to its event loop."""

from __future__ import annotations

import time

import pytest

from agentrt.protocol.engine import GenerationRequest, SamplingParams, TokenEvent
from agentrt.testing.echo import EchoEngine


def _request(text: str, max_tokens: int, ignore_eos: bool = False) -> GenerationRequest:
    return GenerationRequest(
        call_id="c1",
        messages=[{"role": "user", "content": text}],
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
    )


async def _run(
    engine: EchoEngine, request: GenerationRequest, stall_at: int = 0
) -> list[TokenEvent]:
    events = []
    async for event in engine.generate(request):
        events.append(event)
        if len(events) == stall_at:
            time.sleep(0.5)  # noqa: ASYNC251 - the event loop held up, as on a busy host
    return events


@pytest.mark.anyio
async def test_ignoring_the_end_of_the_echo_decodes_exactly_max_tokens() -> None:
    engine = EchoEngine()
    plain = await _run(engine, _request("one two three", 8))
    assert "".join(e.text for e in plain) == "one two three" and plain[-1].finish_reason == "stop"
    events = await _run(engine, _request("one two three", 8, ignore_eos=True))
    assert "".join(e.text for e in events) == "one two three one two three one two"
    assert events[-1].finish_reason == "length" and events[-1].usage.completion_tokens == 8
    short = await _run(engine, _request("one two three", 2, ignore_eos=True))
    assert "".join(e.text for e in short) == "one two" and short[-1].finish_reason == "length"


@pytest.mark.anyio
async def test_tokens_keep_their_pace_after_the_loop_is_held_up() -> None:
    engine = EchoEngine(token_delay=0.05)
    began = time.monotonic()
    events = await _run(engine, _request("w " * 20, 20), stall_at=5)
    took = time.monotonic() - began
    assert sum(1 for e in events if e.text) == 20
    # 20 tokens at 0.05 s are due by 1.0 s; the 0.5 s stall is caught up, not added on.
    assert 0.95 <= took < 1.35, took
