"""The remote backend against a real OpenAI-compatible server on loopback.

The "vLLM" here is agentrt's own app served by uvicorn over an
``EchoEngine``; a small ASGI wrapper records the headers each request
carried, and the engine records the ``priority`` each call arrived with.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from tests.polling import eventually

from agentrt.protocol.engine import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from agentrt.protocol.programs import ToolEvent
from agentrt.scheduling import BalancerConfig, SchedulerConfig
from agentrt.serving.config import ServerConfig
from agentrt.serving.engines import open_engine
from agentrt.serving.http.app import create_app
from agentrt.serving.router import Router, RouterConfig
from agentrt.serving.router.backends import RemoteBackend, RemoteBackendConfig, parse_backend
from agentrt.serving.router.backends.remote import header_safe_id
from agentrt.testing.echo import EchoEngine

FAST = RouterConfig(health_interval_s=0.1, health_timeout_s=2.0, restart_backoff_s=0.1)


class Recorder:
    """ASGI middleware keeping the headers of every request (lower-case names)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1/")
            and scope["path"] != "/v1/models"
        ):
            self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@asynccontextmanager
async def serving(
    engine: EchoEngine, config: ServerConfig | None = None
) -> AsyncIterator[tuple[str, Recorder]]:
    """Our app over ``engine`` on a free loopback port, for the duration of the block."""
    app = Recorder(
        create_app(engine, config or ServerConfig(log_requests=False), close_engine=False)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await eventually(lambda: server.started)
        try:
            yield f"http://127.0.0.1:{port}", app
        finally:
            server.should_exit = True


def chat(
    call_id: str, text: str = "one two three", program: str | None = None, **sampling: Any
) -> GenerationRequest:
    return GenerationRequest(
        call_id=call_id,
        model="echo",
        messages=[{"role": "user", "content": text}],
        program=ProgramTag(program_id=program, thread_id="main") if program else None,
        sampling=SamplingParams(**sampling),
    )


async def collect(client: Router | RemoteBackend, request: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in client.generate(request)]


def test_backend_urls_name_the_server_kind_and_its_priority_order() -> None:
    assert parse_backend("http://gpu1:8000/v1").kind == "openai"
    assert parse_backend("http://gpu1:8000/v1").root == "http://gpu1:8000"
    vllm, sglang = parse_backend("vllm+http://gpu1:8000"), parse_backend("sglang+http://gpu2:30000")
    assert (vllm.kind, vllm.order) == ("vllm", "lower_first")
    assert (sglang.kind, sglang.order) == ("sglang", "higher_first")
    flipped = RemoteBackendConfig(url="http://x", kind="sglang", priority_order="lower_first")
    assert flipped.order == "lower_first"
    with pytest.raises(ValueError, match="http"):
        parse_backend("gpu1:8000")


def test_priority_is_sent_in_the_order_each_server_expects() -> None:
    # Our priority: lower runs sooner (queue level 0 is the top).
    vllm = RemoteBackend("v", parse_backend("vllm+http://x"))
    sglang = RemoteBackend("s", parse_backend("sglang+http://x"))
    plain = RemoteBackend("o", parse_backend("http://x"))
    assert [vllm.remote_priority(p) for p in (0, 3)] == [0, 3]
    assert [sglang.remote_priority(p) for p in (0, 3)] == [0, -3]  # higher runs sooner there
    assert sglang.remote_priority(0) > sglang.remote_priority(3)  # type: ignore[operator]
    assert plain.remote_priority(3) is None  # a server without the field gets none


def test_program_ids_that_are_not_valid_header_ids_are_digested_stably() -> None:
    assert header_safe_id("prog-1") == "prog-1"
    scoped = header_safe_id("tenant-a/prog-1")
    assert scoped == header_safe_id("tenant-a/prog-1") != header_safe_id("tenant-b/prog-1")
    assert "/" not in scoped


async def test_chat_and_completion_calls_stream_through_a_remote_server() -> None:
    engine = EchoEngine(token_delay=0.001)
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST) as router:
            assert [m.id for m in router.models()] == ["echo"]
            events = await collect(
                router, chat("c1", "alpha beta gamma", logprobs=True, top_logprobs=1)
            )
            assert "".join(e.text for e in events) == "alpha beta gamma"
            assert events[-1].finish_reason == "stop"
            assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3
            assert events[-1].timings is not None and events[-1].timings.first_token is not None
            assert all(e.logprobs for e in events if e.text)

            completion = GenerationRequest(
                call_id="c2",
                model="echo",
                prompt="delta epsilon",
                sampling=SamplingParams(max_tokens=1, logit_bias={7: -5.0}),
            )
            events = await collect(router, completion)
            assert "".join(e.text for e in events) == "delta"
            assert events[-1].finish_reason == "length"
    assert [r.call_id for r in engine.requests][-1] != "c1"  # the server names its own calls
    assert engine.requests[0].sampling.logprobs and engine.requests[1].prompt == "delta epsilon"
    assert engine.requests[1].sampling.logit_bias == {7: -5.0}  # forwarded to the remote server


async def test_the_program_travels_as_headers_and_its_priority_in_the_body() -> None:
    engine = EchoEngine()
    # tokens as the service unit and a low first boundary: the second call's program is past level 0
    scheduler = SchedulerConfig(policy="plas", service_unit="tokens", first_boundary=4)
    async with serving(engine) as (url, recorder):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST, scheduler=scheduler) as router:
            await collect(router, chat("c1", program="agent-7"))
            await collect(router, chat("c2", program="agent-7"))
            await collect(router, chat("c3"))
    first, second, untagged = engine.requests
    assert first.priority == 0
    assert second.priority is not None and second.priority >= 1
    assert untagged.priority is None
    assert recorder.headers[0]["x-session-id"] == "agent-7"
    assert recorder.headers[0]["x-agentrt-program"] == "agent-7"
    assert recorder.headers[0]["x-agentrt-thread"] == "main"
    assert first.program is not None and first.program.program_id == "agent-7"
    assert "x-session-id" not in recorder.headers[2]


async def test_sglang_gets_the_priority_negated() -> None:
    engine = EchoEngine()
    scheduler = SchedulerConfig(policy="plas", service_unit="tokens", first_boundary=4)
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"sglang+{url}"))
        async with Router([remote], config=FAST, scheduler=scheduler) as router:
            await collect(router, chat("c1", program="p"))
            await collect(router, chat("c2", program="p"))
    assert engine.requests[1].priority is not None and engine.requests[1].priority <= -1


async def test_remote_errors_come_back_as_our_error_types() -> None:
    engine = EchoEngine(max_model_len=16, max_running=1, token_delay=0.05)
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST) as router:
            with pytest.raises(PromptTooLong) as too_long:
                await collect(router, chat("c1", "w " * 40))
            assert too_long.value.status == 400 and "context length" in str(too_long.value)

            with pytest.raises(EngineError) as unknown:
                await collect(router, msgspec_replace(chat("c2"), model="no-such-model"))
            assert unknown.value.status == 404

            busy = router.generate(chat("c3", "w w w w"))
            await busy.__anext__()
            with pytest.raises(EngineOverloaded) as overloaded:
                await collect(router, chat("c4"))
            assert overloaded.value.retry_after > 0
            await busy.aclose()  # type: ignore[attr-defined]
            assert router.engines()[0].up  # a request's error is not the engine's death


def msgspec_replace(request: GenerationRequest, **changes: Any) -> GenerationRequest:
    import msgspec

    return msgspec.structs.replace(request, **changes)


async def test_tool_calls_come_back_as_the_text_our_parser_reads() -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    engine = EchoEngine()
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST) as router:
            request = msgspec_replace(
                chat("c1", f"<tool_call>{json.dumps(call)}</tool_call>"), tools=tools
            )
            events = await collect(router, request)
    assert events[-1].finish_reason == "tool_calls"
    text = "".join(e.text for e in events)
    assert text.startswith("<tool_call>") and json.loads(text.split("\n")[1]) == call


async def test_leaving_the_stream_closes_it_and_the_server_aborts_the_call() -> None:
    engine = EchoEngine(token_delay=0.02)
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST) as router:
            stream = router.generate(chat("c1", "w " * 100))
            await stream.__anext__()
            await stream.aclose()  # type: ignore[attr-defined]
            await eventually(lambda: len(engine.aborted) == 1)
            assert engine.stats().kv_blocks_used == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_server_cannot_start_and_says_so() -> None:
    remote = RemoteBackend(
        "r", parse_backend(f"vllm+http://127.0.0.1:{_free_port()}"), start_timeout=2
    )
    with pytest.raises(EngineUnavailable, match="unreachable"):
        async with Router([remote], config=RouterConfig(restart=False)):
            pass


async def test_the_api_key_is_sent_to_servers_that_need_one() -> None:
    engine = EchoEngine()
    async with serving(engine, ServerConfig(api_keys=["sk-test"], log_requests=False)) as (url, _):
        keyed = RemoteBackend("r", RemoteBackendConfig(url=url, kind="vllm", api_key="sk-test"))
        async with Router([keyed], config=FAST) as router:
            assert "".join(e.text for e in await collect(router, chat("c1", "ok"))) == "ok"
        keyless = RemoteBackend("r", RemoteBackendConfig(url=url, kind="vllm"))
        with pytest.raises(EngineUnavailable, match="answered 401"):
            async with Router([keyless], config=RouterConfig(restart=False)):
                pass


async def test_another_agentrt_is_told_when_a_program_ends() -> None:
    engine = EchoEngine()
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"agentrt+{url}"))
        async with Router([remote], config=FAST) as router:
            await collect(router, chat("c1", program="agent-9"))
            assert engine.ended_programs == []
            await router.end_program("agent-9")
    assert engine.ended_programs == ["agent-9"]


async def test_a_remote_table_in_the_server_config_routes_to_that_server(tmp_path: Path) -> None:
    engine = EchoEngine()
    async with serving(engine) as (url, _):
        config_file = tmp_path / "server.toml"
        config_file.write_text(
            f'[[remote]]\nurl = "{url}"\nkind = "sglang"\npriority_order = "lower_first"\n'
        )
        async with open_engine(ServerConfig(), config_file) as router:
            assert isinstance(router, Router)
            (status,) = router.engines()
            backend = router._engines[status.engine_id].backend
            assert isinstance(backend, RemoteBackend)
            assert (backend.config.kind, backend.config.order) == ("sglang", "lower_first")
            events = await collect(router, chat("c1", "via the table"))
    assert "".join(e.text for e in events) == "via the table"
    assert len(engine.requests) == 1


async def test_several_choices_come_back_with_their_indexes_and_usage_once() -> None:
    engine = EchoEngine()
    async with serving(engine) as (url, _):
        remote = RemoteBackend("r", parse_backend(f"vllm+{url}"))
        async with Router([remote], config=FAST) as router:
            events = await collect(router, chat("c1", "two ways", n=2))
    for index in (0, 1):
        mine = [e for e in events if e.index == index]
        assert "".join(e.text for e in mine) == "two ways"
        assert mine[-1].finish_reason == "stop"
    assert [e.usage is not None for e in events].count(True) == 1
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 4


class _Chunks:
    """A response whose body arrives in the given pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


async def test_server_sent_events_are_cut_from_the_bytes_wherever_they_split() -> None:
    from agentrt.serving.router.backends.remote import _sse_data

    async def events(*pieces: bytes) -> list[bytes]:
        return [data async for data in _sse_data(_Chunks(*pieces))]  # type: ignore[arg-type]

    body = b'data: {"a":1}\n\n: a comment\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    expected = [b'{"a":1}', b'{"b":2}', b"[DONE]"]
    assert await events(body) == expected
    assert await events(*[body[i : i + 1] for i in range(len(body))]) == expected  # byte by byte
    crlf = body.replace(b"\n", b"\r\n")
    assert await events(*[crlf[i : i + 3] for i in range(0, len(crlf), 3)]) == expected
    cr = crlf.index(b"\r") + 1  # a piece that ends between CR and LF
    assert await events(crlf[:cr], crlf[cr:]) == expected
    # Multi-line data is joined; an event without a blank line at the end still counts.
    assert await events(b"event: x\ndata: one\ndata:two\n\n", b"data: last") == [
        b"one\ntwo",
        b"last",
    ]


class ToolListeningEcho(EchoEngine):
    """An echo engine that hears tool signals (``ToolSignals``), recording them."""

    def __init__(self) -> None:
        super().__init__()
        self.tool_events: list[tuple[str, str, str | None]] = []

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        self.tool_events.append((program_id, event.state, event.tool))


class NoToolRoute:
    """ASGI middleware answering 404 on the tool route, as an agentrt without it does."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/tool"):
            self.refused += 1
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


async def test_tool_signals_reach_another_agentrt_and_skip_servers_without_them() -> None:
    agentrt_engine, vllm_engine = ToolListeningEcho(), ToolListeningEcho()
    program = "tenant-a/agent-1"  # tenant-scoped: digested for the remote, as in the headers
    async with serving(agentrt_engine) as (a_url, _), serving(vllm_engine) as (v_url, _):
        backends = [
            RemoteBackend("a", parse_backend(f"agentrt+{a_url}")),
            RemoteBackend("v", parse_backend(f"vllm+{v_url}")),
        ]
        balancer = BalancerConfig(policy="round_robin")
        async with Router(backends, config=FAST, balancer=balancer) as router:
            await collect(router, chat("c1", program=program))  # to the agentrt server
            await collect(router, chat("c2", program=program))  # to the "vLLM"
            await router.tool_event(program, ToolEvent(state="start", tool="search"))
            await router.tool_event(program, ToolEvent(state="end"))
            await router.tool_event("never-called", ToolEvent(state="start"))
    [call] = agentrt_engine.requests
    assert call.program is not None and call.program.program_id == header_safe_id(program)
    assert agentrt_engine.tool_events == [
        (header_safe_id(program), "start", "search"),
        (header_safe_id(program), "end", None),
    ]
    assert len(vllm_engine.requests) == 1 and vllm_engine.tool_events == []


async def test_an_agentrt_without_the_tool_route_is_not_asked_again() -> None:
    engine = ToolListeningEcho()
    async with serving(engine) as (url, recorder):
        refusing = NoToolRoute(recorder.app)
        recorder.app = refusing
        remote = RemoteBackend("r", parse_backend(f"agentrt+{url}"))
        async with Router([remote], config=FAST) as router:
            await collect(router, chat("c1", program="agent-2"))
            for state in ("start", "end", "start"):
                await router.tool_event("agent-2", ToolEvent(state=state))  # type: ignore[arg-type]
            await collect(router, chat("c2", program="agent-2"))  # calls still go through
    assert refusing.refused == 1 and engine.tool_events == [] and len(engine.requests) == 2
