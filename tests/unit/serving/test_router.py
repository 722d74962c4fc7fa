"""The router: routing by program, per-engine accounting, failover, program lifecycle.

Engines here are real in-process ``EchoEngine`` s behind ``LocalBackend`` s,
so every test runs in milliseconds; worker processes and remote servers have
their own tests.
"""

from __future__ import annotations

import anyio
import pytest
from tests.polling import eventually

from agentrt.protocol.engine import (
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    InvalidRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from agentrt.scheduling import BalancerConfig, SchedulerConfig
from agentrt.serving.router import Router, RouterConfig, estimate_prompt_tokens
from agentrt.serving.router.backends import LocalBackend
from agentrt.testing.echo import EchoEngine

FAST = RouterConfig(health_interval_s=0.05, health_timeout_s=1.0, restart_backoff_s=0.05)


def chat(
    call_id: str, text: str = "one two three", program: str | None = None, **sampling: object
) -> GenerationRequest:
    return GenerationRequest(
        call_id=call_id,
        messages=[{"role": "user", "content": text}],
        program=ProgramTag(program_id=program) if program else None,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def collect(router: Router, request: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in router.generate(request)]


def engines(n: int, **options: object) -> tuple[list[EchoEngine], list[LocalBackend]]:
    echoes = [EchoEngine(**options) for _ in range(n)]  # type: ignore[arg-type]
    return echoes, [LocalBackend(f"e{i}", echo) for i, echo in enumerate(echoes)]


async def test_a_call_streams_through_the_router_unchanged() -> None:
    echoes, backends = engines(1)
    async with Router(backends, config=FAST) as router:
        events = await collect(router, chat("c1", "hello brave world"))
    assert "".join(e.text for e in events) == "hello brave world"
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3
    assert echoes[0].finished == ["c1"]


async def test_the_program_tag_reaches_the_engine_and_the_program_is_started_there_once() -> None:
    echoes, backends = engines(1)
    async with Router(backends, config=FAST) as router:
        await collect(router, chat("c1", program="p1"))
        await collect(router, chat("c2", program="p1"))
        assert list(echoes[0].programs) == ["p1"]
        assert [r.program.program_id for r in echoes[0].requests if r.program] == ["p1", "p1"]
        await router.end_program("p1")
        assert echoes[0].ended_programs == ["p1"]
        assert "p1" not in router.table


async def test_completed_calls_charge_their_program_and_leave_records() -> None:
    _, backends = engines(1)
    config = SchedulerConfig(policy="plas", service_unit="tokens")
    async with Router(backends, config=FAST, scheduler=config) as router:
        await router.start_program(ProgramTag(program_id="p1"))
        await collect(router, chat("c1", "a b c", program="p1"))
        entry = router.table.get("p1")
        assert entry is not None
        # tokens unit: the prompt the engine processed plus the 3 tokens it generated
        first = entry.service
        assert first > 3
        await collect(router, chat("c2", "a b c", program="p1"))
        assert entry.service == pytest.approx(2 * first)  # PLAS: the sum of its calls
        assert [r.call_id for r in entry.records()] == ["c1", "c2"]
        assert all(r.outcome == "finished" for r in entry.records())


async def test_short_calls_go_to_the_least_used_engine() -> None:
    echoes, backends = engines(2, token_delay=0.05)
    async with Router(backends, config=FAST) as router, anyio.create_task_group() as tg:
        started = anyio.Event()

        async def hold(call_id: str) -> None:
            async for _ in router.generate(chat(call_id, "w " * 20, program="busy")):
                started.set()

        tg.start_soon(hold, "long-running")
        await started.wait()
        await collect(router, chat("short", program="other"))
        assert [r.call_id for r in echoes[1].requests] == ["short"]
        tg.cancel_scope.cancel()


async def test_long_calls_of_a_program_stick_to_its_engine() -> None:
    echoes, backends = engines(3)
    long_text = "word " * 3000  # well over the 2048-token locality threshold
    async with Router(backends, config=FAST, balancer=BalancerConfig(policy="locality")) as router:
        for i in range(4):
            await collect(router, chat(f"long{i}", long_text, program="p", max_tokens=1))
        served = [{r.call_id for r in e.requests} for e in echoes]
        assert sorted(len(s) for s in served) == [0, 0, 4]
        entry = router.table.get("p")
        assert entry is not None and entry.engine_id is not None


def test_the_prompt_estimate_counts_token_ids_exactly_and_text_by_characters() -> None:
    assert estimate_prompt_tokens(GenerationRequest(call_id="c", prompt=[1, 2, 3]), 4.0) == 3
    assert estimate_prompt_tokens(GenerationRequest(call_id="c", prompt="x" * 400), 4.0) == 100
    tools = [{"type": "function", "function": {"name": "f" * 100}}]
    bare = estimate_prompt_tokens(chat("c", "x" * 400), 4.0)
    assert (
        estimate_prompt_tokens(
            GenerationRequest(
                call_id="c", messages=[{"role": "user", "content": "x" * 400}], tools=tools
            ),
            4.0,
        )
        > bare
        > 100
    )


async def test_stats_and_models_aggregate_over_engines() -> None:
    echoes, backends = engines(2, token_delay=0.05)
    async with Router(backends, config=FAST) as router, anyio.create_task_group() as tg:
        started = [anyio.Event(), anyio.Event()]

        async def hold(i: int) -> None:
            async for _ in router.generate(chat(f"c{i}", "w " * 20)):
                started[i].set()

        for i in range(2):
            tg.start_soon(hold, i)
        for event in started:
            await event.wait()
        stats = router.stats()
        assert stats.running == 2
        assert stats.kv_blocks_total == sum(e.kv_blocks_total for e in echoes)
        assert stats.kv_usage == pytest.approx(stats.kv_blocks_used / stats.kv_blocks_total)
        assert [m.id for m in router.models()] == ["echo"]
        assert [s.live_calls for s in router.engines()] == [1, 1]
        tg.cancel_scope.cancel()


async def test_leaving_the_stream_early_aborts_the_engine_call_and_frees_the_slot() -> None:
    echoes, backends = engines(1, token_delay=0.01)
    async with Router(backends, config=FAST) as router:
        events = router.generate(chat("c1", "w " * 50))
        async for _ in events:
            break
        await events.aclose()  # type: ignore[attr-defined]
        assert echoes[0].aborted == ["c1"]
        assert router.balancer.load("e0") == 0
        assert router.engines()[0].live_calls == 0
        assert echoes[0].stats().kv_blocks_used == 0


async def test_abort_by_call_id_ends_the_stream_with_an_abort_event() -> None:
    echoes, backends = engines(1, token_delay=0.01)
    async with Router(backends, config=FAST) as router:
        events: list[TokenEvent] = []
        async for event in router.generate(chat("c1", "w " * 50)):
            events.append(event)
            if len(events) == 2:
                await router.abort("c1")
        assert events[-1].finish_reason == "abort"
        assert len(events) < 50
        assert echoes[0].aborted == ["c1"]


async def test_engine_errors_reach_the_caller_with_their_type_and_free_the_slot() -> None:
    _, backends = engines(1, max_model_len=8)
    async with Router(backends, config=FAST) as router:
        with pytest.raises(PromptTooLong):
            await collect(router, chat("c1", "w " * 20, program="p"))
        assert router.balancer.load("e0") == 0
        entry = router.table.get("p")
        assert entry is not None and entry.records()[0].outcome == "aborted"


async def test_a_call_id_already_in_flight_is_refused() -> None:
    _, backends = engines(1, token_delay=0.05)
    async with Router(backends, config=FAST) as router:
        first = router.generate(chat("same", "w " * 10))
        await first.__anext__()
        with pytest.raises(InvalidRequest):
            await collect(router, chat("same"))
        await first.aclose()  # type: ignore[attr-defined]


async def test_a_lost_engine_fails_its_calls_promptly_and_new_calls_go_to_the_live_one() -> None:
    _, backends = engines(2, token_delay=0.02)
    config = RouterConfig(health_interval_s=60, restart=False)
    long_text = "word " * 3000
    async with Router(backends, config=config) as router:
        # Pin program p to an engine with a long call, then start another long call there.
        await collect(router, chat("warm", long_text, program="p", max_tokens=1))
        entry = router.table.get("p")
        assert entry is not None and entry.engine_id is not None
        doomed = entry.engine_id
        doomed_backend = backends[int(doomed[1:])]
        stream = router.generate(chat("inflight", long_text, program="p"))
        await stream.__anext__()
        await doomed_backend.close()  # the engine goes away under a running call
        with anyio.fail_after(5), pytest.raises(EngineUnavailable):
            async for _ in stream:
                pass
        status = {s.engine_id: s for s in router.engines()}
        assert not status[doomed].up and status[doomed].reason
        assert entry.engine_id is None  # unpinned
        events = await collect(router, chat("after", long_text, program="p", max_tokens=1))
        assert events[-1].finish_reason is not None
        assert entry.engine_id not in (None, doomed)  # re-pinned to the live engine


async def test_a_failed_health_check_takes_the_engine_down_and_a_restart_brings_it_back() -> None:
    echoes, backends = engines(1)

    def broken_stats() -> None:
        raise RuntimeError("engine wedged")

    async with Router(backends, config=FAST) as router:
        echoes[0].stats = broken_stats  # type: ignore[method-assign]
        await eventually(lambda: not router.engines()[0].up)
        assert "engine wedged" in router.engines()[0].reason
        with pytest.raises(EngineUnavailable, match="no engine is available"):
            await collect(router, chat("c1"))
        with pytest.raises(EngineUnavailable, match="engine wedged"):
            router.stats()  # /health answers 503 with the reason
        assert [m.id for m in router.models()] == ["echo"]  # still known: calls get 503, not 404
        del echoes[0].stats  # healed: the next restart stays up
        await eventually(lambda: router.engines()[0].up)
        assert router.engines()[0].restarts >= 1
        await collect(router, chat("c2"))


async def test_programs_expire_after_the_ttl_and_engines_are_told() -> None:
    echoes, backends = engines(1)
    async with Router(
        backends, config=FAST, scheduler=SchedulerConfig(program_ttl_s=0.1)
    ) as router:
        await collect(router, chat("c1", program="idle"))
        await eventually(lambda: "idle" not in router.table)
        # The engines are told after the program has left the table, so the two are not simultaneous.
        await eventually(lambda: echoes[0].ended_programs == ["idle"])


async def test_the_process_table_is_bounded() -> None:
    _, backends = engines(1)
    async with Router(backends, config=FAST, scheduler=SchedulerConfig(max_programs=3)) as router:
        for i in range(10):
            await collect(router, chat(f"c{i}", program=f"p{i}"))
        assert len(router.table) == 3
        assert [e.program_id for e in router.table.programs()] == ["p7", "p8", "p9"]


async def test_a_router_whose_engines_all_fail_to_start_says_why() -> None:
    class Refusing(EchoEngine):
        async def __aenter__(self) -> Refusing:
            raise RuntimeError("no GPU here")

        async def __aexit__(self, *exc: object) -> None:
            return None

    router = Router([LocalBackend("e0", Refusing())], config=FAST)
    with pytest.raises(EngineUnavailable, match="no GPU here"):
        async with router:
            pass


async def test_calls_in_flight_when_the_router_closes_fail_cleanly() -> None:
    _, backends = engines(1, token_delay=0.05)
    router = Router(backends, config=FAST)
    async with router:
        stream = router.generate(chat("c1", "w " * 50))
        await stream.__anext__()
    with anyio.fail_after(5), pytest.raises(EngineUnavailable, match="shutting down"):
        async for _ in stream:
            pass
    with pytest.raises(EngineUnavailable, match="not running"):
        await collect(router, chat("c2"))


def test_backend_ids_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Router([LocalBackend("x", EchoEngine()), LocalBackend("x", EchoEngine())])


async def test_program_aware_engines_are_told_the_service_the_program_got_elsewhere() -> None:
    echoes, backends = engines(2)
    config = SchedulerConfig(policy="plas", service_unit="tokens")
    async with Router(
        backends, config=FAST, scheduler=config, balancer=BalancerConfig(policy="round_robin")
    ) as router:
        await collect(router, chat("c1", "a b c", program="p"))  # on e0
        await collect(router, chat("c2", "a b c", program="p"))  # on e1, which never saw c1
        entry = router.table.get("p")
        assert entry is not None
        first, second = echoes[0].requests[0], echoes[1].requests[0]
        assert first.program is not None and first.program.attained_service == 0
        assert second.program is not None and second.program.attained_service > 0
        assert second.program.attained_service < entry.service  # what it had before c2, not after


async def test_a_call_stuck_in_an_engine_that_stops_answering_fails_instead_of_hanging() -> None:
    echoes, backends = engines(1, first_token_delay=3600)  # the engine never produces a token
    async with Router(backends, config=FAST) as router, anyio.create_task_group() as tg:
        failure: list[BaseException] = []

        async def stuck_call() -> None:
            try:
                await collect(router, chat("stuck"))
            except EngineUnavailable as e:
                failure.append(e)

        tg.start_soon(stuck_call)
        await eventually(lambda: router.engines()[0].live_calls == 1)

        def wedged() -> None:
            raise RuntimeError("engine stopped answering")

        echoes[0].stats = wedged  # type: ignore[method-assign]
        await eventually(lambda: failure, within=5)
        assert "engine stopped answering" in str(failure[0])


class _Failed(EchoEngine):
    """An engine that has failed for good: its stats say so, as AsyncEngine's do."""

    def stats(self) -> EngineStats:
        raise EngineUnavailable("the engine failed: model fault")


async def test_an_engine_that_failed_is_taken_down_and_the_others_keep_serving() -> None:
    failed = _Failed()
    async with Router(
        [LocalBackend("bad", failed), LocalBackend("good", EchoEngine())], config=FAST
    ) as router:
        router.stats()  # the live engine's numbers: the failed one is left out, not an error
        await eventually(lambda: not router.engines()[0].up)
        for i in range(4):
            events = await collect(router, chat(f"c{i}"))
            assert events[-1].finish_reason is not None
