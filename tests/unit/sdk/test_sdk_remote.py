"""Across HTTP: the httpx hook and transports send the program, the ASGI middleware adopts it.

A tool server reached over HTTP from inside a program makes its own LLM
calls; with ProgramContextMiddleware they stay in the caller's program, in
the caller's thread, following the caller's call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx
from tests.unit.sdk.recording import RecordingServer, Seen, aask, ask

import agentrt
from agentrt.protocol import headers as h


def by_prompt(calls: list[Seen]) -> dict[str, Seen]:
    return {c.prompt: c for c in calls}


def tool_server(llm: agentrt.AsyncOpenAI, sync_llm: agentrt.OpenAI) -> Any:
    """A raw ASGI tool server: /search calls the LLM twice, /fanout from two tasks, /sync from a worker thread."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        if path == "/search":
            await aask(llm, "tool-1")
            await aask(llm, "tool-2")
        elif path == "/fanout":
            await asyncio.gather(aask(llm, "fan-a"), aask(llm, "fan-b"))
        elif path == "/sync":
            await anyio.to_thread.run_sync(ask, sync_llm, "from-worker")
        ctx = agentrt.current_program()
        body = json.dumps({"program": ctx.program_id if ctx else None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return agentrt.ProgramContextMiddleware(app)


def remote(app: Any) -> httpx.AsyncClient:
    transport = agentrt.AsyncProgramHeadersTransport(httpx.ASGITransport(app=app))
    return httpx.AsyncClient(transport=transport, base_url="http://tools.test")


async def test_llm_calls_made_by_a_remote_tool_stay_in_the_callers_thread(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    llm = server.async_client()
    async with remote(app) as tools, agentrt.program() as ctx:
        await aask(llm, "before")
        response = await tools.post("/search")
        await aask(llm, "after")
    assert response.json() == {"program": ctx.program_id}
    calls = by_prompt(server.calls())
    before, one, two = calls["before"], calls["tool-1"], calls["tool-2"]
    assert one.program == two.program == ctx.program_id
    assert one.thread == two.thread == "0"
    assert one.parent == before.call
    assert two.parent == one.call
    assert calls["after"].parent == before.call


async def test_a_remote_tool_that_forks_gets_thread_ids_that_never_collide(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    llm = server.async_client()
    async with remote(app) as tools, agentrt.program() as ctx:
        await aask(llm, "before")
        await asyncio.gather(aask(llm, "local-a"), aask(llm, "local-b"))
        await tools.post("/fanout")
    calls = by_prompt(server.calls())
    local = {calls["local-a"].thread, calls["local-b"].thread}
    assert local == {"0", "1"}  # the gather's first branch continues the main thread
    # The first branch to call continues the caller's thread; the other is a new thread
    # whose id carries the tool server's random prefix, so it cannot collide with the caller's.
    continued, forked = sorted([calls["fan-a"].thread or "", calls["fan-b"].thread or ""], key=len)
    assert continued == "0"
    assert "." in forked and forked not in local
    # Both follow the main thread's last call: the gather branch that continued it.
    main = calls["local-a"] if calls["local-a"].thread == "0" else calls["local-b"]
    assert {calls["fan-a"].parent, calls["fan-b"].parent} == {main.call}
    assert {calls["fan-a"].program, calls["fan-b"].program} == {ctx.program_id}


async def test_a_sync_endpoint_in_a_worker_thread_continues_the_callers_thread(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    llm = server.async_client()
    async with remote(app) as tools, agentrt.program() as ctx:
        await aask(llm, "before")
        await tools.post("/sync")
    worker = by_prompt(server.calls())["from-worker"]
    assert (worker.program, worker.thread) == (ctx.program_id, "0")
    assert worker.parent == by_prompt(server.calls())["before"].call


async def test_the_tool_server_never_ends_the_callers_program(server: RecordingServer) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    async with remote(app) as tools, agentrt.program() as ctx:
        await tools.post("/search")
    # The tool server's calls did not announce the program; the caller never called the LLM.
    assert server.program_requests() == []
    assert {c.program for c in server.calls()} == {ctx.program_id}


async def test_requests_without_program_headers_run_outside_any_program(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as plain:
        response = await plain.post("/search")
    assert response.json() == {"program": None}
    assert all(c.headers == {} for c in server.calls())


async def test_malformed_program_headers_get_a_400_in_the_openai_error_schema(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as plain:
        response = await plain.post("/search", headers={h.PROGRAM: "p", h.INTERRUPT: "soon"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == h.INTERRUPT
    assert server.calls() == []


async def test_a_bare_session_id_from_a_foreign_client_is_adopted_as_the_program(
    server: RecordingServer,
) -> None:
    app = tool_server(server.async_client(), server.sync_client())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as plain:
        response = await plain.post("/search", headers={h.SESSION: "sess-7"})
    assert response.json() == {"program": "sess-7"}
    assert {c.program for c in server.calls()} == {"sess-7"}


def test_the_sync_event_hook_adds_propagation_headers_but_no_call_id() -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={})

    client = httpx.Client(
        transport=httpx.MockTransport(handler),
        event_hooks={"request": [agentrt.add_program_headers]},
    )
    client.get("http://tools.test/lookup")
    with agentrt.program("hooked") as ctx:
        client.get("http://tools.test/lookup")
    outside, inside = seen
    assert h.PROGRAM not in outside
    assert inside[h.PROGRAM] == inside[h.SESSION] == ctx.program_id
    assert inside[h.THREAD] == "0"
    assert h.CALL not in inside and h.PARENT_CALL not in inside
    assert inside[h.PROGRAM_NAME] == "hooked"


def test_raw_llm_calls_through_a_hooked_httpx_client_get_call_ids() -> None:
    seen: list[httpx.Headers] = []
    lifecycle: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if "/programs" in request.url.path:
            lifecycle.append((request.method, request.url.path, request.read()))
            assert h.PROGRAM not in request.headers
        else:
            seen.append(request.headers)
        return httpx.Response(200, json={})

    transport = agentrt.ProgramHeadersTransport(httpx.MockTransport(handler))
    with httpx.Client(transport=transport) as client, agentrt.program("raw") as ctx:
        client.post("http://llm.test/v1/chat/completions", json={})
        client.post("http://llm.test/v1/chat/completions", json={}, headers={h.CALL: "mine"})
    first, second = seen
    assert first[h.CALL] and h.PARENT_CALL not in first
    assert second[h.CALL] == "mine"  # the caller's own header is kept
    assert second[h.PARENT_CALL] == first[h.CALL]
    # The transport announced the program (with its name) before its first call, through
    # itself, and ended it when the program returned.
    (post, post_path, body), (delete, delete_path, _) = lifecycle
    assert (post, post_path) == ("POST", "/v1/programs")
    assert json.loads(body)["name"] == "raw" and json.loads(body)["program_id"] == ctx.program_id
    assert (delete, delete_path) == ("DELETE", f"/v1/programs/{ctx.program_id}")


async def test_the_async_event_hook(server: RecordingServer) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={})

    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(handler),
            event_hooks={"request": [agentrt.add_program_headers_async]},
        ) as client,
        agentrt.program() as ctx,
    ):
        await client.get("http://tools.test/x")
    assert seen[0][h.PROGRAM] == ctx.program_id


async def test_the_middleware_passes_lifespan_through_and_refuses_bad_websockets() -> None:
    received: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received.append(scope["type"])

    middleware = agentrt.ProgramContextMiddleware(app)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    await middleware({"type": "lifespan"}, receive, send)
    await middleware(
        {"type": "websocket", "headers": [(b"x-agentrt-program", b"bad id")]}, receive, send
    )
    assert received == ["lifespan"]
    assert sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008
