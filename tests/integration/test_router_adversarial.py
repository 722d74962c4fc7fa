"""The router, its replicas and its remote servers under hostile conditions.

Remote servers here are a scripted OpenAI-compatible server on raw TCP, so a
test can make one call's stream misbehave (cut it, stall it, end it early)
while another call streams normally from the same server. Replicas are
worker processes over the model-free echo engine, frozen with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from tests.polling import eventually
from tests.unit.serving.test_router import chat, collect

from agentrt.protocol.engine import (
    EngineUnavailable,
    InvalidRequest,
    ProgramTag,
)
from agentrt.scheduling import BalancerConfig, SchedulerConfig
from agentrt.serving.router import Router, RouterConfig
from agentrt.serving.router.backends import (
    EngineSpec,
    LocalBackend,
    ProcessBackend,
    RemoteBackend,
    RemoteBackendConfig,
)
from agentrt.testing.echo import EchoEngine

FAST = RouterConfig(health_interval_s=0.1, health_timeout_s=0.5, restart_backoff_s=0.1)
ECHO = "agentrt.testing.echo:EchoEngine"
BIG = "w" * 1_500_000  # one frame larger than the worker channel's 1 MiB send buffer

# -- a scripted remote server -------------------------------------------------

Script = Callable[[SocketStream, dict[str, Any]], Awaitable[None]]


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def delta(text: str | None = None, finish: str | None = None) -> bytes:
    content = {"content": text} if text else {}
    return sse({"choices": [{"index": 0, "delta": content, "finish_reason": finish}]})


async def head(stream: SocketStream, status: int = 200, **headers: str | int) -> None:
    lines = {"content-type": "text/event-stream", "connection": "close", **headers}
    fields = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in lines.items())
    await stream.send(f"HTTP/1.1 {status} X\r\n{fields}\r\n".encode())


async def echo_slowly(stream: SocketStream, body: dict[str, Any]) -> None:
    """A well-behaved stream: the prompt's words back, 20 ms apart, then finish, usage, [DONE]."""
    await head(stream)
    for word in body["messages"][-1]["content"].split():
        await stream.send(delta(word + " "))
        await anyio.sleep(0.02)
    usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    await stream.send(delta(finish="stop") + sse(usage) + sse("[DONE]"))


class ScriptedServer:
    """Answers /v1/models and /health; a POST runs the script named by its prompt's first word."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {"ok": echo_slowly}
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, stream: SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        header, _, body = data.partition(b"\r\n\r\n")
        request_line, *fields = header.decode().split("\r\n")
        method, path, _ = request_line.split(" ")
        length = 0
        for field in fields:
            name, _, value = field.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive()
        if method == "POST":
            request = json.loads(body)
            await self.scripts[request["messages"][-1]["content"].split()[0]](stream, request)
        elif method == "DELETE":
            await self.scripts["DELETE"](stream, {})
        else:
            answer = (
                json.dumps({"data": [{"id": "echo"}]}).encode() if path == "/v1/models" else b""
            )
            await head(stream, content_type="application/json", content_length=len(answer))
            await stream.send(answer)


@asynccontextmanager
async def scripted_server() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server.port = listener.extra(SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            with suppress(anyio.BrokenResourceError, anyio.EndOfStream, ConnectionError):
                await server.handle(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def cut_mid_stream(stream: SocketStream, body: dict[str, Any]) -> None:
    await head(stream, transfer_encoding="chunked")
    chunk = delta("partial ")
    await stream.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    await stream.aclose()  # no terminating chunk: the connection is cut


async def no_finish(stream: SocketStream, body: dict[str, Any]) -> None:
    await head(stream)
    await stream.send(delta("partial ") + sse("[DONE]"))


async def html_page(stream: SocketStream, body: dict[str, Any]) -> None:
    await head(stream, content_type="text/html", content_length=13)
    await stream.send(b"<html></html>")


async def stall(stream: SocketStream, body: dict[str, Any]) -> None:
    await head(stream)
    await stream.send(delta("partial "))
    await anyio.sleep_forever()


@pytest.mark.parametrize("script", [cut_mid_stream, no_finish, html_page, stall])
async def test_a_broken_stream_fails_its_own_call_and_not_the_others_on_the_server(
    script: Script,
) -> None:
    async with scripted_server() as server:
        server.scripts["sick"] = script
        config = RemoteBackendConfig(url=server.url, kind="vllm", read_timeout=0.3)
        async with Router([RemoteBackend("r", config)], config=FAST) as router:
            bystander = router.generate(chat("healthy", "ok " + "word " * 30))
            first = await bystander.__anext__()
            with anyio.fail_after(5), pytest.raises(EngineUnavailable) as failed:
                await collect(router, chat("sick", "sick call"))
            assert failed.value.status == 503
            rest = [event async for event in bystander]  # the healthy call is not collateral
            assert first.text + "".join(e.text for e in rest) == "ok " + "word " * 30
            assert rest[-1].finish_reason == "stop"
            (status,) = router.engines()
            assert (status.up, status.restarts, status.live_calls) == (True, 0, 0)


async def test_an_error_event_mid_stream_keeps_the_status_the_server_gave_it() -> None:
    async def bad_request(stream: SocketStream, body: dict[str, Any]) -> None:
        error = {"message": "bad grammar", "type": "BadRequestError", "code": 400}
        await head(stream)
        await stream.send(delta("partial ") + sse({"error": error}))

    async with scripted_server() as server:
        server.scripts["bad"] = bad_request
        remote = RemoteBackend("r", RemoteBackendConfig(url=server.url, kind="vllm"))
        async with Router([remote], config=FAST) as router:
            with pytest.raises(InvalidRequest, match="bad grammar") as failed:
                await collect(router, chat("c1", "bad request"))
    assert (failed.value.status, failed.value.type) == (400, "BadRequestError")


async def test_a_stalled_engine_holds_up_neither_ending_a_program_nor_the_health_checks() -> None:
    async def stalled_delete(stream: SocketStream, body: dict[str, Any]) -> None:
        await anyio.sleep_forever()

    echo = EchoEngine()
    scheduler = SchedulerConfig(program_ttl_s=0.2)
    async with scripted_server() as server:
        server.scripts["DELETE"] = stalled_delete
        stalled = RemoteBackend("r", RemoteBackendConfig(url=server.url, kind="agentrt"))
        backends = [stalled, LocalBackend("e", echo)]
        balancer = BalancerConfig(policy="round_robin")
        async with Router(backends, config=FAST, scheduler=scheduler, balancer=balancer) as router:
            for program in ("ended", "idle"):  # one call on each engine
                await collect(router, chat(f"{program}1", "ok", program=program))
                await collect(router, chat(f"{program}2", "ok", program=program))
            with anyio.fail_after(3):  # returns although DELETE /v1/programs/ended stalls
                await router.end_program("ended")

            await eventually(lambda: "idle" not in router.table)  # expired: its DELETE stalls

            def wedged() -> None:
                raise RuntimeError("engine wedged")

            echo.stats = wedged  # type: ignore[method-assign]
            await eventually(lambda: not router.engines()[1].up, within=3)  # still checked


# -- engines that stop answering ----------------------------------------------


class StuckStart(EchoEngine):
    """An engine that never acknowledges a new program (a hung replica or actor)."""

    async def start_program(self, tag: ProgramTag) -> None:
        await anyio.sleep_forever()


async def test_a_call_interrupted_while_its_program_starts_gets_a_503_or_an_abort() -> None:
    engine = StuckStart()
    async with Router([LocalBackend("e", engine)], config=FAST) as router:
        stream = router.generate(chat("aborted", program="p"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(router.abort, "aborted")  # runs once the call waits on start_program
            with anyio.fail_after(5):
                (event,) = [e async for e in stream]
        assert event.finish_reason == "abort"

        def wedged() -> None:
            raise RuntimeError("engine wedged")

        engine.stats = wedged  # type: ignore[method-assign]
        with anyio.fail_after(5), pytest.raises(EngineUnavailable, match="engine wedged"):
            await collect(router, chat("failed", program="q"))
        assert router.engines()[0].live_calls == 0


async def test_calls_waiting_on_a_frozen_replica_with_a_full_socket_fail_and_leave_nothing() -> (
    None
):
    frozen = ProcessBackend("r0", EngineSpec(factory=ECHO), shutdown_timeout=0.5)
    async with Router([frozen], config=FAST) as router:
        await collect(router, chat("c0", program="p"))
        old_pid, channel = frozen.pid, frozen._channel
        assert old_pid is not None and channel is not None
        os.kill(old_pid, signal.SIGSTOP)
        try:
            failed: list[str] = []

            async def doomed(call_id: str) -> None:
                with pytest.raises(EngineUnavailable):
                    await collect(router, chat(call_id, BIG))
                failed.append(call_id)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(doomed, "big1")
                    # The writer took big1's frame and is stuck writing it to the frozen worker ...
                    await eventually(lambda: len(router._calls) == 1 and not channel._queued_bytes)
                    tg.start_soon(doomed, "big2")  # ... so big2 waits for room in the buffer
                    await eventually(lambda: channel._queued_bytes > 0)
                    await router.end_program("p")  # and so does telling the engine p ended
            assert sorted(failed) == ["big1", "big2"]
            assert router.engines()[0].live_calls == 0 and not router._calls
            assert "p" not in router.table
        finally:
            with suppress(ProcessLookupError):  # the router kills it when it gives it up
                os.kill(old_pid, signal.SIGKILL)


async def test_a_frozen_replica_with_a_full_socket_is_replaced() -> None:
    frozen = ProcessBackend("r0", EngineSpec(factory=ECHO), shutdown_timeout=0.5)
    async with Router([frozen], config=FAST) as router:
        old_pid = frozen.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(10), pytest.raises(EngineUnavailable):
                await collect(router, chat("big", BIG))  # its frame fills the worker's socket
            await eventually(lambda: router.engines()[0].up and frozen.pid != old_pid, within=20)
            events = await collect(router, chat("c1", "fresh worker"))
            assert "".join(e.text for e in events) == "fresh worker"
        finally:
            with suppress(ProcessLookupError):  # the router kills it when it gives it up
                os.kill(old_pid, signal.SIGKILL)
