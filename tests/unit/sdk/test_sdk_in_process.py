"""agentrt.OpenAI(app=...) talks to agentrt's own app in-process, program headers and lifecycle included."""

from __future__ import annotations

import asyncio

import pytest

import agentrt

serving = pytest.importorskip("agentrt.serving.inprocess")  # the server extra
from agentrt.testing.echo import EchoEngine  # noqa: E402


@pytest.fixture
def engine() -> EchoEngine:
    return EchoEngine()


def test_the_sync_client_reaches_the_app_and_the_engine_sees_the_program(
    engine: EchoEngine,
) -> None:
    client = agentrt.OpenAI(app=agentrt.serve_in_process(engine))
    with agentrt.program("in-process") as ctx:
        first = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hello there"}]
        )
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        inside = agentrt.current_program()
        # While the program runs, the server knows it (the SDK announced it).
        listed = client.get(f"/programs/{ctx.program_id}", cast_to=object)
    assert first.choices[0].message.content
    assert streamed.split() == ["one", "two", "three"]
    one, two = engine.requests
    assert one.program is not None and two.program is not None
    assert (one.program.program_id, one.program.thread_id) == (ctx.program_id, "0")
    assert one.program.parent_call_id is None
    assert two.call_id == inside.parent_call_id  # type: ignore[union-attr]  # the server adopted our call id
    assert two.program.parent_call_id == one.call_id
    assert (
        isinstance(listed, dict)
        and listed["id"] == ctx.program_id
        and listed["name"] == "in-process"
    )
    # After the program, the server no longer has it.
    with pytest.raises(Exception) as gone:
        client.get(f"/programs/{ctx.program_id}", cast_to=object)
    assert getattr(gone.value, "status_code", None) == 404


async def test_the_async_client_reaches_the_app_from_tasks_of_the_program(
    engine: EchoEngine,
) -> None:
    client = agentrt.AsyncOpenAI(app=agentrt.serve_in_process(engine))

    async def ask(text: str) -> None:
        await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": text}]
        )

    async with agentrt.program() as ctx:
        await ask("root")
        await asyncio.gather(ask("left"), ask("right"))
    root = engine.requests[0]
    branches = engine.requests[1:]
    assert {r.program.program_id for r in engine.requests if r.program} == {ctx.program_id}
    # The first branch of the gather continues the main thread, the other forks.
    assert {r.program.thread_id for r in branches if r.program} == {"0", "1"}
    assert {r.program.parent_call_id for r in branches if r.program} == {root.call_id}
