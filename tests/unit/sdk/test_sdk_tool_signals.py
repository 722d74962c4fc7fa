"""Tool signals: the outermost ``@agentrt.tool`` of a thread tells the program's servers when
it starts and ends, in order with the program's calls, and never breaks the tool."""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.sdk.recording import RecordingServer, aask, ask

import agentrt
from agentrt.sdk import lifecycle


def test_a_sync_tool_signals_start_and_end_between_the_calls(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.tool
    def inner() -> int:
        return 1

    @agentrt.tool
    def lookup() -> int:
        return inner() + 1  # nested: one signal pair, for the outer tool

    @agentrt.program
    def agent() -> str:
        ask(client)
        assert lookup() == 2
        ask(client)
        return agentrt.current_program().program_id  # type: ignore[union-attr]

    program_id = agent()
    name = "test_a_sync_tool_signals_start_and_end_between_the_calls.<locals>.lookup"
    assert server.tool_signals() == [(program_id, "start", name), (program_id, "end", name)]
    paths = [(s.method, s.path.rsplit("/", 1)[-1]) for s in server.seen]
    assert paths == [
        ("POST", "programs"),
        ("POST", "completions"),
        ("POST", "tool"),
        ("POST", "tool"),
        ("POST", "completions"),
        ("DELETE", program_id),
    ]
    assert server.seen[2].body["thread_id"] == "0"


async def test_an_async_tool_signals_through_the_async_client(server: RecordingServer) -> None:
    client = server.async_client()

    @agentrt.tool
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "page"

    async with agentrt.program() as ctx:
        await aask(client)
        assert await fetch() == "page"
        await aask(client)
    assert [state for _, state, _ in server.tool_signals()] == ["start", "end"]
    assert {pid for pid, _, _ in server.tool_signals()} == {ctx.program_id}


async def test_a_failing_async_tool_still_signals_its_end(server: RecordingServer) -> None:
    client = server.async_client()

    @agentrt.tool
    async def broken() -> None:
        raise ValueError("tool failed")

    async with agentrt.program():
        await aask(client)
        with pytest.raises(ValueError, match="tool failed"):
            await broken()
    assert [state for _, state, _ in server.tool_signals()] == ["start", "end"]


def test_no_signal_before_the_program_reached_a_server(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.tool
    def prepare() -> None:
        pass

    with agentrt.program():
        prepare()  # no server knows the program yet
        ask(client)
    assert server.tool_signals() == []


def test_a_sync_tool_does_not_signal_through_an_async_client(server: RecordingServer) -> None:
    aclient = server.async_client()

    @agentrt.tool
    def step() -> None:
        pass

    with agentrt.program():
        asyncio.run(aask(aclient))
        step()
    assert server.tool_signals() == []
    assert len(server.calls()) == 1


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_the_tool_route_is_not_signalled_again(status: int) -> None:
    server = RecordingServer(tool_route=status)
    client = server.sync_client()

    @agentrt.tool
    def step() -> str:
        return "done"

    with agentrt.program():
        ask(client)
        for _ in range(3):
            assert step() == "done"
        ask(client)
    assert [state for _, state, _ in server.tool_signals()] == ["start"]
    assert len(server.calls()) == 2


def test_a_failing_tool_route_never_breaks_the_tool() -> None:
    server = RecordingServer(tool_route=500)
    client = server.sync_client()

    @agentrt.tool
    def step() -> str:
        return "done"

    with agentrt.program():
        ask(client)
        assert step() == "done"
        assert step() == "done"
    assert len(server.tool_signals()) == 4  # a 500 is no reason to stop trying


def test_the_environment_switches_the_signals_off(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lifecycle.TOOL_SIGNALS_ENV, "0")
    client = server.sync_client()

    @agentrt.tool
    def step() -> None:
        pass

    with agentrt.program():
        ask(client)
        step()
    assert server.tool_signals() == []
