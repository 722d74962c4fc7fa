"""In-process mode: the official clients stream token by token without a socket, and hang-ups abort.

"Before the generation ends" is checked without clocks: when the first
content chunk reaches the client, the engine must still be running the call
(its per-token delay keeps it busy), which a buffering transport could never
show.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from tests.unit.serving.inprocess_clients import async_client, serving, sync_client

import agentrt
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.serving.inprocess import AppRunner, serve_in_process
from agentrt.testing.echo import EchoEngine

WORDS = " ".join(f"w{i}" for i in range(20))
ASK = [{"role": "user", "content": WORDS}]


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return bool(condition())


def test_the_sync_client_receives_chunks_while_the_engine_still_generates() -> None:
    with serving(EchoEngine(token_delay=0.02)) as (app, engine):
        stream = sync_client(app).chat.completions.create(model="echo", messages=ASK, stream=True)
        running_at_first_token = None
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if running_at_first_token is None:
                    running_at_first_token = engine.stats().running
                pieces.append(chunk.choices[0].delta.content)
    assert running_at_first_token == 1
    assert "".join(pieces) == WORDS
    assert len(pieces) == 20


async def test_the_async_client_receives_chunks_while_the_engine_still_generates() -> None:
    with serving(EchoEngine(token_delay=0.02)) as (app, engine):
        stream = await async_client(app).chat.completions.create(
            model="echo", messages=ASK, stream=True
        )
        seen_running = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen_running.append(engine.stats().running)
    assert seen_running[0] == 1
    assert len(seen_running) == 20


def test_closing_a_stream_early_aborts_the_call_and_frees_its_kv() -> None:
    with serving(EchoEngine(token_delay=0.02)) as (app, engine):
        stream = sync_client(app).chat.completions.create(model="echo", messages=ASK, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        call_id = chunk.id.removeprefix("chatcmpl-")
        assert engine.stats().kv_blocks_used > 0
        stream.close()
        # The transport's close waits for the app to finish cleaning up: no polling needed.
        assert engine.aborted == [call_id]
        assert engine.stats().kv_blocks_used == 0
        assert engine.stats().running == 0


async def test_cancelling_an_async_request_that_waits_for_its_answer_aborts_the_call() -> None:
    with serving(EchoEngine(first_token_delay=30)) as (app, engine):
        client = async_client(app)
        with anyio.move_on_after(0.3):
            await client.chat.completions.create(model="echo", messages=ASK)
        await anyio.to_thread.run_sync(lambda: wait_until(lambda: engine.aborted))
    assert len(engine.aborted) == 1
    assert engine.stats().kv_blocks_used == 0


def test_a_request_waiting_for_a_server_slot_is_dropped_when_its_client_leaves() -> None:
    engine = EchoEngine(token_delay=0.05)
    with serving(engine, max_concurrent_requests=1, max_queued_requests=8) as (app, _):
        client = sync_client(app)
        blocker = client.chat.completions.create(model="echo", messages=ASK, stream=True)
        next(iter(blocker))
        leaver = sync_client(app, timeout=0.2)
        with pytest.raises(Exception, match=r"timed out|Timeout"):
            leaver.chat.completions.create(model="echo", messages=ASK)
        state = app.state.server
        assert wait_until(lambda: state.limiter.queued == 0)
        blocker.close()
    assert len(engine.requests) == 1  # the leaver never reached the engine


def test_one_app_serves_sync_clients_on_threads_and_async_clients_on_other_loops() -> None:
    with serving(EchoEngine()) as (app, _):
        client = sync_client(app)
        answers: list[str] = []

        def ask(i: int) -> None:
            reply = client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": f"t{i}"}]
            )
            answers.append(reply.choices[0].message.content or "")

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)

        async def ask_async(text: str) -> str:
            reply = await async_client(app).chat.completions.create(
                model="echo", messages=[{"role": "user", "content": text}]
            )
            return reply.choices[0].message.content or ""

        first_loop = anyio.run(ask_async, "loop one")
        second_loop = anyio.run(ask_async, "loop two")
    assert sorted(answers) == sorted(f"t{i}" for i in range(8))
    assert (first_loop, second_loop) == ("loop one", "loop two")


def test_the_lifespan_runs_on_first_use_and_closing_the_runner_closes_the_engine() -> None:
    engine = EchoEngine()
    app = create_app(engine, ServerConfig(log_requests=False))
    runner = AppRunner.for_app(app)
    assert runner.started_portal() is None  # nothing runs before the first request
    sync_client(app).models.list()
    assert runner.started_portal() is not None
    assert AppRunner.for_app(app) is runner
    runner.close()
    assert engine._closed
    with pytest.raises(RuntimeError, match="shut down"):
        runner.portal  # noqa: B018


def test_an_engine_factory_is_entered_at_startup_and_exited_at_shutdown() -> None:
    from contextlib import asynccontextmanager

    events: list[str] = []
    engine = EchoEngine()

    @asynccontextmanager
    async def factory() -> Any:
        events.append("start")
        yield engine
        events.append("stop")

    app = create_app(factory, ServerConfig(log_requests=False))
    assert (
        sync_client(app)
        .chat.completions.create(model="echo", messages=ASK)
        .choices[0]
        .message.content
        == WORDS
    )
    AppRunner.for_app(app).close()
    assert events == ["start", "stop"]


def test_serve_in_process_with_the_sdk_client_and_a_program() -> None:
    engine = EchoEngine()
    app = serve_in_process(engine)
    client = agentrt.OpenAI(app=app)

    @agentrt.program
    def two_turns() -> str:
        first = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one"}]
        )
        second = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "two"}]
        )
        return (first.choices[0].message.content or "") + (second.choices[0].message.content or "")

    try:
        assert two_turns() == "onetwo"
        programs = {r.program.program_id for r in engine.requests if r.program}
        assert len(programs) == 1
        (program_id,) = programs
        assert program_id in engine.ended_programs  # the SDK ended it (DELETE /v1/programs/{id})
        assert engine.requests[1].program is not None
        assert engine.requests[1].program.parent_call_id == engine.requests[0].call_id
    finally:
        AppRunner.for_app(app).close()


def test_serve_in_process_rejects_what_it_cannot_serve() -> None:
    with pytest.raises(TypeError, match="EngineClient, EngineConfig or ServerConfig"):
        serve_in_process("a model name")  # type: ignore[arg-type]


def test_an_app_that_fails_to_start_raises_a_clear_error_and_can_retry() -> None:
    from contextlib import asynccontextmanager

    attempts: list[int] = []

    @asynccontextmanager
    async def flaky() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("model file missing")
        yield EchoEngine()

    app = create_app(flaky, ServerConfig(log_requests=False))
    client = sync_client(app)
    with pytest.raises(RuntimeError, match="model file missing"):
        client.models.list()
    assert [m.id for m in client.models.list()] == ["echo"]
    AppRunner.for_app(app).close()
    assert len(attempts) == 2



def test_an_app_started_inside_a_program_runs_its_lifespan_outside_it() -> None:
    """Engine tasks spawned by the lifespan must not inherit the program of the first caller."""
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    seen.append(agentrt.current_program())
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    runner = AppRunner(app)
    try:
        with agentrt.program("first-caller"):
            assert runner.portal is not None
    finally:
        runner.close()
    assert seen == [None]


class _Lines:
    """Stands in for the server's loggers: records each line's level and event."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, event: str, **fields: Any) -> None:
        self.lines.append((level, event))


@pytest.mark.parametrize("in_process", [True, False])
def test_the_in_process_server_logs_requests_at_debug_and_the_standalone_one_at_info(
    monkeypatch: pytest.MonkeyPatch, in_process: bool
) -> None:
    import logging

    from agentrt.serving.http import app as app_module
    from agentrt.serving.http import exchange, middleware

    lines = _Lines()
    for module in (app_module, exchange, middleware):
        monkeypatch.setattr(module, "log", lines)
    engine = EchoEngine(token_delay=0.02)
    app = serve_in_process(engine) if in_process else create_app(engine, ServerConfig())
    try:
        client = sync_client(app)
        client.chat.completions.create(model="echo", messages=ASK)
        with client.chat.completions.create(model="echo", messages=ASK, stream=True) as stream:
            next(iter(stream))  # then hang up: a disconnect line
        assert wait_until(lambda: ("client disconnected" in {e for _, e in lines.lines}))
    finally:
        AppRunner.for_app(app).close()
    events = [e for _, e in lines.lines]
    assert events.count("request") == 2 and "serving" in events
    expected = logging.DEBUG if in_process else logging.INFO
    assert {level for level, _ in lines.lines} == {expected}
