"""Adversarial cases of the client SDK: real-world ways of using the clients and decorators."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from tests.unit.sdk.recording import BASE_URL, RecordingServer, Seen, aask, ask

import agentrt
from agentrt.protocol import headers as h
from agentrt.protocol.headers import MAX_NAME_LENGTH, parse_headers
from agentrt.sdk.context import ProgramContext


def test_a_program_name_over_the_header_limit_does_not_break_its_calls(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    long_name = "summarise: " + "é" * 400

    with agentrt.program(long_name):
        ask(client)
    (call,) = server.calls()
    # What the server does with the headers: parse them (a 400 if the name is too long).
    parsed = parse_headers(call.headers)
    assert parsed is not None and parsed.program_name == long_name[:MAX_NAME_LENGTH]
    post = next(s for s in server.seen if s.method == "POST" and "/programs" in s.path)
    assert post.body["name"] == long_name[:MAX_NAME_LENGTH]


def test_an_agentrt_client_on_a_hooked_http_client_keeps_its_call_chain(
    server: RecordingServer,
) -> None:
    """Hooks and agentrt clients together (one shared httpx client) must not mint extra calls."""
    client = agentrt.OpenAI(
        base_url=BASE_URL,
        api_key="k",
        max_retries=0,
        http_client=httpx.Client(
            transport=agentrt.ProgramHeadersTransport(httpx.MockTransport(server.handler(httpx))),
            event_hooks={"request": [agentrt.add_program_headers]},
        ),
    )
    with agentrt.program():
        ask(client)
        ask(client)
        after = agentrt.current_program()
    first, second = server.calls()
    assert h.PARENT_CALL not in first.headers  # not parented to itself
    assert second.parent == first.call
    assert after is not None and after.parent_call_id == second.call


class _AsyncAgent:
    def __init__(self, client: agentrt.AsyncOpenAI) -> None:
        self.client = client

    async def __call__(self, text: str) -> ProgramContext | None:
        await aask(self.client, text)
        return agentrt.current_program()


def _plain_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator written for sync functions: applied to an async one it returns its coroutine."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


async def test_async_callables_that_are_not_coroutine_functions_run_inside_the_program(
    server: RecordingServer,
) -> None:
    client = server.async_client()

    @agentrt.program
    @_plain_wrapper
    async def wrapped(text: str) -> ProgramContext | None:
        await aask(client, text)
        return agentrt.current_program()

    agents: list[Callable[[str], Awaitable[ProgramContext | None]]] = [
        agentrt.program(_AsyncAgent(client)),
        agentrt.program(functools.partial(_AsyncAgent(client).__call__)),
        wrapped,
    ]
    for agent in agents:
        ctx = await agent("x")
        assert ctx is not None
        assert server.calls()[-1].program == ctx.program_id
        assert server.program_requests()[-2:] == [
            ("POST", ctx.program_id),
            ("DELETE", ctx.program_id),
        ]
    assert agentrt.current_program() is None


async def test_an_async_tool_behind_a_sync_wrapper_reports_its_time(
    server: RecordingServer,
) -> None:
    import asyncio

    client = server.async_client()

    @agentrt.tool
    @_plain_wrapper
    async def search(query: str) -> str:
        await asyncio.sleep(0.05)
        return query

    async with agentrt.program():
        await search("q")
        await aask(client)
    (call,) = server.calls()
    assert float(call.headers[h.INTERRUPT]) >= 0.05


def test_a_program_named_after_a_callable_object_or_a_partial(server: RecordingServer) -> None:
    client = server.sync_client()

    class Agent:
        def __call__(self, text: str) -> str:
            return ask(client, text)

    def answer(client: agentrt.OpenAI, text: str) -> str:
        return ask(client, text)

    assert agentrt.program(Agent())("a") == "ok:a"
    assert agentrt.program(functools.partial(answer, client))("b") == "ok:b"
    names = [s.body["name"] for s in server.seen if s.method == "POST" and "/programs" in s.path]
    assert names == [
        f"{test_a_program_named_after_a_callable_object_or_a_partial.__qualname__}.<locals>.Agent",
        f"{test_a_program_named_after_a_callable_object_or_a_partial.__qualname__}.<locals>.answer",
    ]


class _SlowPrograms(RecordingServer):
    """Program endpoints that time out; the LLM calls themselves are fine."""

    def handler(self, module: Any) -> Callable[[Any], Any]:
        answer = super().handler(module)

        def handle(request: Any) -> Any:
            if "/programs" in request.url.path:
                with self.lock:
                    self.seen.append(Seen(request.method, request.url.path, {}, {}))
                raise httpx.ReadTimeout("no answer", request=request)
            return answer(request)

        return handle


def test_program_endpoints_that_time_out_are_left_alone_for_a_while() -> None:
    server = _SlowPrograms()
    client = server.sync_client()

    @agentrt.program
    def agent() -> str:
        return ask(client)

    with capture_logs() as logs:
        results = [agent() for _ in range(20)]
    assert results == ["ok:hi"] * 20
    lifecycle_requests = [s for s in server.seen if "/programs" in s.path]
    # The first program's announcement timed out; no later program waits on them again.
    assert len(lifecycle_requests) == 1
    assert sum(e["log_level"] == "warning" for e in logs) == 1


async def test_async_program_endpoints_that_time_out_are_left_alone_for_a_while() -> None:
    server = _SlowPrograms()
    client = server.async_client()

    @agentrt.program
    async def agent() -> str:
        return await aask(client)

    for _ in range(5):
        assert await agent() == "ok:hi"
    assert len([s for s in server.seen if "/programs" in s.path]) == 1


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_program_that_closed_its_client_is_left_to_the_server_without_a_warning(
    server: RecordingServer, is_async: bool
) -> None:
    with capture_logs() as logs:
        if is_async:
            async with agentrt.program(), server.async_client() as aclient:
                await aask(aclient)
        else:
            with agentrt.program(), server.sync_client() as client:
                ask(client)
    assert [e for e in logs if e["log_level"] == "warning"] == []
