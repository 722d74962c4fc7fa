"""Admission in front of a remote first-come-first-served server with few slots.

The server is agentrt's app over an ``EchoEngine`` with ``slots``: it runs at
most that many calls and queues the rest in arrival order, as llama.cpp's
server does. The router's remote backend keeps at most ``max_inflight``
calls there and holds the rest in the policy's order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.responses import JSONResponse
from tests.polling import eventually
from tests.unit.serving.test_remote import FAST, chat, collect, serving

from agentrt.protocol.engine import EngineUnavailable, PromptTooLong, TokenEvent
from agentrt.scheduling import SchedulerConfig
from agentrt.serving.router import Router
from agentrt.serving.router.backends import RemoteBackend, parse_backend
from agentrt.testing.echo import EchoEngine

TOKENS = SchedulerConfig(policy="plas", service_unit="tokens", first_boundary=16)


def backend(url: str, spec: str = "openai+{url},max_inflight=1,queue_ahead=0") -> RemoteBackend:
    return RemoteBackend("r", parse_backend(spec.format(url=url)), scheduler=TOKENS)


def programs_in_start_order(engine: EchoEngine) -> list[str]:
    return [r.program.program_id if r.program else "" for r in engine.requests]


async def test_backend_specs_carry_max_inflight_and_queue_ahead() -> None:
    spec = parse_backend("llamacpp+http://h:8080,max_inflight=4,queue_ahead=2")
    assert (spec.max_inflight, spec.queue_ahead) == (4, 2)
    assert parse_backend("http://h:8080,queue_ahead=0").queue_ahead == 0
    assert parse_backend("llamacpp+http://h:8080,slot_save=1").slot_save
    assert parse_backend("http://h:8080").max_inflight is None
    for bad in (
        "http://h:8080,max_inflight=0",
        "http://h:8080,slots=2",
        "http://h,max_inflight=x",
        "http://h,queue_ahead=-1",
        "http://h,slot_save=2",
    ):
        with pytest.raises(ValueError, match="max_inflight"):
            parse_backend(bad)


async def test_one_call_waits_in_the_servers_queue_and_the_rest_here() -> None:
    engine = EchoEngine(slots=1, token_delay=0.01)
    async with serving(engine) as (url, _):
        remote = backend(url, "openai+{url},max_inflight=1,queue_ahead=1")
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            await collect(router, chat("warm", "w " * 40, program="heavy"))
            blocker = router.generate(chat("block", "w " * 30, program="other"))
            await blocker.__anext__()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, router, chat("ahead", "x y", program="first"))
                await eventually(lambda: engine.stats().waiting == 1)
                tg.start_soon(collect, router, chat("h2", "x y", program="heavy"))
                await eventually(lambda: remote.admission.waiting == 1)
                tg.start_soon(collect, router, chat("l1", "x y", program="light"))
                await eventually(lambda: remote.admission.waiting == 2)
                assert engine.stats().waiting == 1 and remote.admission.inflight == 2
                await blocker.aclose()  # type: ignore[attr-defined]
            assert programs_in_start_order(engine) == ["heavy", "other", "first", "light", "heavy"]
            assert engine.peak_running == 1
    assert remote.admission.inflight == 0


async def test_waiting_calls_start_in_the_policys_order_not_the_servers() -> None:
    engine = EchoEngine(slots=1, token_delay=0.01)
    async with serving(engine) as (url, _):
        remote = backend(url)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            await collect(router, chat("warm", "w " * 40, program="heavy"))  # 40+ tokens of service
            blocker = router.generate(chat("block", "w " * 30, program="other"))
            await blocker.__anext__()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, router, chat("h2", "x y", program="heavy"))
                await eventually(lambda: remote.admission.waiting == 1)
                tg.start_soon(collect, router, chat("l1", "x y", program="light"))
                await eventually(lambda: remote.admission.waiting == 2)
                assert remote.stats().waiting == 2 and engine.stats().waiting == 0
                await blocker.aclose()  # type: ignore[attr-defined]
            assert programs_in_start_order(engine) == ["heavy", "other", "light", "heavy"]
            assert engine.peak_running == 1
            # The wait is the call's queue time in its program's record.
            entry = router.table.get("heavy")
            assert entry is not None and entry.recent[-1].wait > 0
    assert remote.admission.inflight == 0


async def test_calls_beyond_the_bound_wait_here_and_every_one_finishes() -> None:
    engine = EchoEngine(slots=2, token_delay=0.005)
    async with serving(engine) as (url, _):
        remote = backend(url, "openai+{url},max_inflight=2")
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            results: dict[str, list[TokenEvent]] = {}

            async def one(i: int) -> None:
                results[f"c{i}"] = await collect(
                    router, chat(f"c{i}", "a b c d e", program=f"p{i}")
                )

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(one, i)
            assert all("".join(e.text for e in r) == "a b c d e" for r in results.values())
            waits = [r[-1].timings.queue_time for r in results.values() if r[-1].timings]
            assert len(waits) == 8 and sum(w > 0 for w in waits) >= 5
    assert engine.peak_running == 2 and remote.admission.inflight == 0


async def test_the_slot_is_released_when_the_server_ends_the_stream() -> None:
    """Not when the caller takes the final event: a slow caller does not hold the server's slot."""
    engine = EchoEngine(slots=1)
    async with serving(engine) as (url, _):
        remote = backend(url)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            first = router.generate(chat("first", "a b c", program="p1"))
            events = [await first.__anext__()]
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, router, chat("second", "x y", program="p2"))
                await eventually(lambda: remote.admission.waiting == 1)
                while events[-1].finish_reason is None:
                    events.append(await first.__anext__())
                # The final event is in hand and the stream not yet closed by the caller.
                assert remote.admission.waiting == 0
                await first.aclose()  # type: ignore[attr-defined]
    assert remote.admission.inflight == 0 and engine.started == ["first", "second"]


async def test_an_abandoned_waiting_call_never_reaches_the_server() -> None:
    engine = EchoEngine(slots=1, token_delay=0.01)
    async with serving(engine) as (url, _):
        remote = backend(url)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            blocker = router.generate(chat("block", "w " * 30, program="a"))
            await blocker.__anext__()
            waiting = router.generate(chat("gone", "x", program="b"))
            async with anyio.create_task_group() as tg:
                got: list[TokenEvent] = []

                async def consume() -> None:
                    async for event in waiting:
                        got.append(event)

                tg.start_soon(consume)
                await eventually(lambda: remote.admission.waiting == 1)
                await router.abort("gone")
            assert [e.finish_reason for e in got] == ["abort"]
            assert remote.admission.waiting == 0
            await blocker.aclose()  # type: ignore[attr-defined]
            await collect(router, chat("after", "y", program="c"))
    assert programs_in_start_order(engine) == ["a", "c"]
    assert remote.admission.inflight == 0


async def test_failed_calls_leave_no_slot_taken() -> None:
    engine = EchoEngine(slots=1, max_model_len=16)
    async with serving(engine) as (url, _):
        remote = backend(url)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            for i in range(3):
                with pytest.raises(PromptTooLong):
                    await collect(router, chat(f"bad{i}", "w " * 40, program="p"))
            assert remote.admission.inflight == 0
            events = await collect(router, chat("good", "fine", program="p"))
            assert events[-1].finish_reason == "stop"
    assert remote.admission.inflight == 0


async def test_calls_in_flight_and_waiting_fail_when_the_server_goes_away() -> None:
    engine = EchoEngine(slots=1, token_delay=0.05)
    async with serving(engine) as (url, _):
        remote = backend(url)
        router = Router([remote], config=FAST, scheduler=TOKENS)
        async with router:
            failures: list[str] = []

            async def one(call_id: str) -> None:
                try:
                    await collect(router, chat(call_id, "w " * 200, program=call_id))
                except EngineUnavailable:
                    failures.append(call_id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "running")
                await eventually(lambda: remote.admission.inflight == 1)
                tg.start_soon(one, "waiting")
                await eventually(lambda: remote.admission.waiting == 1)
                router._engine_down(router._engines["r"], "test: server gone")
            assert sorted(failures) == ["running", "waiting"]
            assert remote.admission.inflight == 0 and remote.admission.waiting == 0


@asynccontextmanager
async def llama_like(
    engine: EchoEngine, slots: int, actions: list[tuple[str, str, str]] | None = None
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The echo server with llama.cpp's ``/props`` (``total_slots``), keeping each call's body;
    with ``actions``, it takes slot saves and restores and keeps them as (slot, action, file)."""
    bodies: list[dict[str, Any]] = []
    async with serving(engine) as (url, recorder):
        inner = recorder.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/props":
                await JSONResponse({"total_slots": slots})(scope, receive, send)
                return
            if (
                scope["type"] == "http"
                and scope["path"].startswith("/slots/")
                and actions is not None
            ):
                body = json.loads((await receive())["body"])
                action = scope["query_string"].decode().removeprefix("action=")
                actions.append((scope["path"].removeprefix("/slots/"), action, body["filename"]))
                await JSONResponse({"id_slot": 0})(scope, receive, send)
                return
            if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
                await inner(scope, receive, send)
                return
            chunks: list[bytes] = []
            message = await receive()
            chunks.append(message.get("body", b""))
            while message.get("more_body"):
                message = await receive()
                chunks.append(message.get("body", b""))
            bodies.append(json.loads(b"".join(chunks)))
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()

            await inner(scope, replay, send)

        recorder.app = app
        yield url, bodies


async def test_llama_cpp_slots_are_discovered_and_each_program_keeps_its_slot() -> None:
    engine = EchoEngine(slots=2, token_delay=0.001)
    async with llama_like(engine, 2) as (url, bodies):
        remote = RemoteBackend("r", parse_backend(f"llamacpp+{url}"), scheduler=TOKENS)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            assert remote.admission.limit == 2
            for turn in range(3):
                for program in ("a", "b"):
                    await collect(router, chat(f"{program}{turn}", "hi", program=program))
    assert len(bodies) == 6 and all(b["cache_prompt"] is True for b in bodies)
    a_slots = {b["id_slot"] for i, b in enumerate(bodies) if i % 2 == 0}
    b_slots = {b["id_slot"] for i, b in enumerate(bodies) if i % 2 == 1}
    assert len(a_slots) == len(b_slots) == 1 and a_slots != b_slots


async def test_a_configured_bound_wins_over_the_servers_slots() -> None:
    engine = EchoEngine(slots=4)
    async with llama_like(engine, 4) as (url, bodies):
        remote = RemoteBackend("r", parse_backend(f"llamacpp+{url},max_inflight=2"))
        async with Router([remote], config=FAST) as router:
            assert remote.admission.limit == 2
            await collect(router, chat("c", "hi", program="p"))
    assert "id_slot" not in bodies[0]  # fewer calls than slots: the server picks


async def test_a_program_whose_slot_is_taken_is_saved_and_then_restored() -> None:
    engine = EchoEngine(slots=1, token_delay=0.001)
    actions: list[tuple[str, str, str]] = []
    async with llama_like(engine, 1, actions) as (url, bodies):
        remote = RemoteBackend("r", parse_backend(f"llamacpp+{url},slot_save=1"), scheduler=TOKENS)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            assert remote.admission.ahead == 0  # calls sent ahead could not be saved first
            for call_id, program in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")):
                await collect(router, chat(call_id, "hi", program=program))
            # Counted where the KV counters of an embedded engine are: two slots taken, both
            # contexts saved, one restored.
            stats = router.stats()
            assert (stats.kv_contexts_lost, stats.kv_contexts_offloaded, stats.kv_contexts_restored) == (2, 2, 1)
    assert [b["id_slot"] for b in bodies] == [0, 0, 0, 0]
    (slot_a, save_a, file_a), (slot_b, save_b, file_b), (slot_r, restore, file_r) = actions
    assert (save_a, save_b, restore) == ("save", "save", "restore")
    assert slot_a == slot_b == slot_r == "0"
    assert file_r == file_a != file_b and file_a.startswith("agentrt-")


async def test_without_a_save_path_the_call_runs_and_is_recomputed() -> None:
    engine = EchoEngine(slots=1, token_delay=0.001)
    async with llama_like(engine, 1) as (url, bodies):  # /slots answers 404 here
        remote = RemoteBackend("r", parse_backend(f"llamacpp+{url},slot_save=1"), scheduler=TOKENS)
        async with Router([remote], config=FAST, scheduler=TOKENS) as router:
            for call_id, program in (("a1", "a"), ("b1", "b"), ("a2", "a")):
                events = await collect(router, chat(call_id, "hi", program=program))
                assert events[-1].finish_reason == "stop"
            slots = remote.admission._slots
            assert slots is not None and not slots.saved  # A's save failed: nothing to restore
            stats = remote.stats()
            assert (stats.kv_contexts_lost, stats.kv_contexts_offloaded, stats.kv_contexts_restored) == (2, 0, 0)
    assert len(bodies) == 3


async def test_a_call_sent_ahead_counts_its_wait_at_the_server_as_queue_time() -> None:
    """Its program is charged for the time it ran, not for the time it waited for a slot there."""
    engine = EchoEngine(slots=1, token_delay=0.02)
    async with llama_like(engine, 1) as (url, _):
        remote = RemoteBackend(
            "r", parse_backend(f"llamacpp+{url},queue_ahead=1"), scheduler=TOKENS
        )
        async with (
            Router([remote], config=FAST, scheduler=TOKENS) as router,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(collect, router, chat("running", "w " * 20, program="a"))
            await eventually(lambda: engine.stats().running == 1)
            ahead = await collect(router, chat("ahead", "x y", program="b"))
    timings = ahead[-1].timings
    assert timings is not None
    # It waited at the server for most of the first call's 0.4 s, then ran two tokens (0.04 s).
    assert timings.queue_time > 0.2 and timings.model_time < 0.2
