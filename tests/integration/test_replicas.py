"""Engine replicas in worker processes behind the router (``agentrt serve --replicas N``).

Workers are real processes speaking the msgspec protocol over a socket pair;
one is killed with SIGKILL mid-stream to check failover.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import pytest
from tests.polling import eventually

from agentrt.protocol.engine import (
    EngineUnavailable,
    GenerationRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from agentrt.serving.config import ServerConfig
from agentrt.serving.engines import open_engine
from agentrt.serving.router import Router, RouterConfig
from agentrt.serving.router.backends import EngineSpec, ProcessBackend

ECHO = "agentrt.testing.echo:EchoEngine"
LONG = "word " * 3000  # past the locality threshold: the program is pinned to one replica


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


def backend(router: Router, engine_id: str) -> ProcessBackend:
    found = router._engines[engine_id].backend
    assert isinstance(found, ProcessBackend)
    return found


async def test_a_killed_replica_fails_its_calls_promptly_and_its_programs_move(
    tmp_path: Path,
) -> None:
    # The path `agentrt serve --replicas 2 --config FILE` takes, with a model-free engine.
    config_file = tmp_path / "server.toml"
    config_file.write_text("[router]\nhealth_interval_s = 0.2\nrestart_backoff_s = 0.2\n")
    config = ServerConfig(replicas=2, engine_factory=ECHO, engine_options={"token_delay": 0.05})
    async with open_engine(config, config_file) as router:
        assert isinstance(router, Router)
        assert {s.engine_id for s in router.engines() if s.up} == {"replica-0", "replica-1"}
        await collect(router, chat("warm", LONG, program="p", max_tokens=1))
        entry = router.table.get("p")
        assert entry is not None and entry.engine_id is not None
        doomed = entry.engine_id
        old_pid = backend(router, doomed).pid
        assert old_pid is not None

        stream = router.generate(chat("inflight", LONG, program="p"))
        await stream.__anext__()
        os.kill(old_pid, signal.SIGKILL)
        with anyio.fail_after(5), pytest.raises(EngineUnavailable, match="SIGKILL"):
            async for _ in stream:
                pass

        status = {s.engine_id: s for s in router.engines()}
        assert not status[doomed].up
        events = await collect(router, chat("after", LONG, program="p", max_tokens=1))
        assert events[-1].finish_reason == "length"
        assert entry.engine_id not in (None, doomed)  # re-pinned to the live replica

        # The supervisor brings a fresh worker back.
        await eventually(lambda: router.engines()[int(doomed[-1])].up)
        assert backend(router, doomed).pid not in (None, old_pid)
        assert (
            "".join(e.text for e in await collect(router, chat("again", "back again")))
            == "back again"
        )


@pytest.mark.slow  # imports torch and builds a model in two processes, twice for one of them
async def test_a_replica_whose_engine_failed_is_taken_out_and_replaced() -> None:
    from tests.integration.replica_engines import POISON_TOKEN

    spec = EngineSpec(factory="tests.integration.replica_engines:faulty_tiny_llama_engine")
    replicas = [ProcessBackend("r0", spec), ProcessBackend("r1", spec)]
    config = RouterConfig(health_interval_s=0.2, restart_backoff_s=0.2)

    def tokens(call_id: str, prompt: list[int]) -> GenerationRequest:
        sampling = SamplingParams(max_tokens=3, temperature=0.0)
        return GenerationRequest(call_id=call_id, prompt=prompt, sampling=sampling)

    async with Router(replicas, config=config) as router:
        pids = {r.engine_id: r.pid for r in replicas}
        with pytest.raises(EngineUnavailable, match="model fault"):
            await collect(router, tokens("poison", [1, 2, POISON_TOKEN]))

        # Its health check now fails: the worker exits and a fresh one takes its place.
        def replaced() -> bool:
            return any(r.pid not in (None, pids[r.engine_id]) for r in replicas) and all(
                s.up for s in router.engines()
            )

        await eventually(replaced, within=30)
        [failed] = [s for s in router.engines() if s.restarts]
        assert failed.restarts == 1
        for i in range(6):  # every call lands on a working engine
            events = await collect(router, tokens(f"after{i}", [1, 2, 3]))
            assert events[-1].finish_reason == "length"


async def test_calls_cross_the_process_boundary_intact() -> None:
    spec = EngineSpec(factory=ECHO, options={"max_model_len": 64})
    async with Router([ProcessBackend("r0", spec)]) as router:
        events = await collect(
            router, chat("c1", "alpha beta gamma", program="p", logprobs=True, top_logprobs=2)
        )
        assert "".join(e.text for e in events) == "alpha beta gamma"
        assert all(e.logprobs for e in events if e.text)
        assert events[-1].usage is not None and events[-1].timings is not None
        assert [m.id for m in router.models()] == ["echo"]

        with pytest.raises(PromptTooLong, match="maximum context length"):
            await collect(router, chat("c2", "w " * 100))


async def test_leaving_a_stream_early_aborts_the_call_in_the_worker() -> None:
    spec = EngineSpec(factory=ECHO, options={"token_delay": 0.02})
    replica = ProcessBackend("r0", spec)
    async with Router([replica]) as router:
        stream = router.generate(chat("c1", "w " * 100))
        await stream.__anext__()
        await replica.check_health()
        assert replica.stats().running == 1
        await stream.aclose()  # type: ignore[attr-defined]
        await replica.check_health()
        assert replica.stats().running == 0
        assert replica.stats().kv_blocks_used == 0


async def test_a_replica_whose_engine_cannot_be_built_says_why() -> None:
    spec = EngineSpec(
        factory="tests.integration.replica_engines:broken_engine",
        options={"reason": "no such model"},
    )
    with pytest.raises(EngineUnavailable, match="no such model"):
        async with Router([ProcessBackend("r0", spec)], config=RouterConfig(restart=False)):
            pass


@pytest.mark.slow  # imports torch and builds a model in two processes
async def test_a_worker_runs_the_embedded_engine() -> None:
    spec = EngineSpec(factory="tests.integration.replica_engines:tiny_llama_engine")
    request = GenerationRequest(
        call_id="c1", prompt=[1, 2, 3, 4, 5], sampling=SamplingParams(max_tokens=6, temperature=0.0)
    )
    async with Router([ProcessBackend("r0", spec)]) as router:
        remote = [t for e in await collect(router, request) for t in e.token_ids]
    from tests.integration.replica_engines import tiny_llama_engine

    engine = await tiny_llama_engine()
    try:
        local = [t for e in [e async for e in engine.generate(request)] for t in e.token_ids]
    finally:
        await engine.close()
    assert len(remote) == 6
    assert remote == local  # same weights, greedy: the worker computes what this process does


async def test_tool_signals_reach_the_worker_that_ran_the_program() -> None:
    from agentrt.protocol.programs import ToolEvent

    spec = EngineSpec(
        factory="tests.integration.replica_engines:tiny_llama_engine",
        options={"kv_retention": "ttl"},
    )
    request = GenerationRequest(
        call_id="c1",
        prompt=list(range(1, 41)),
        program=ProgramTag(program_id="agent"),
        sampling=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
    )
    backends = [ProcessBackend("r0", spec), ProcessBackend("r1", spec)]
    async with Router(backends) as router:
        await collect(router, request)  # both idle: whichever came up first
        ran = [int("agent" in router._engines[b.engine_id].programs) for b in backends]
        assert sorted(ran) == [0, 1]
        # Within the pin's TTL (the 1 s prior): that worker holds the agent's context for the tool.
        await router.tool_event("agent", ToolEvent(state="start", tool="search"))
        await router.tool_event("agent", ToolEvent(state="end"))

        async def held() -> list[int]:
            for b in backends:
                await b.check_health()  # a ping refreshes the stats the router reads
            return [b.stats().kv_pins_held for b in backends]

        with anyio.fail_after(20):
            while (found := await held()) != ran:
                assert found[ran.index(0)] == 0  # the other worker never ran the agent's calls
                await anyio.sleep(0.05)


async def test_many_concurrent_calls_leave_nothing_behind() -> None:
    """Finished, abandoned and failing calls in parallel over two replicas: every slot and KV block comes back."""
    spec = EngineSpec(factory=ECHO, options={"token_delay": 0.002, "max_model_len": 256})
    replicas = [ProcessBackend("r0", spec), ProcessBackend("r1", spec)]
    outcomes: dict[str, int] = {"finished": 0, "abandoned": 0, "rejected": 0}
    async with Router(replicas) as router:

        async def one(i: int) -> None:
            program = f"p{i % 7}"
            if i % 5 == 0:  # too long for the context: the engine refuses it
                with pytest.raises(PromptTooLong):
                    await collect(router, chat(f"c{i}", "w " * 300, program=program))
                outcomes["rejected"] += 1
            elif i % 3 == 0:  # the client goes away after two tokens
                stream = router.generate(chat(f"c{i}", "w " * 50, program=program))
                for _ in range(2):
                    await stream.__anext__()
                await stream.aclose()  # type: ignore[attr-defined]
                outcomes["abandoned"] += 1
            else:
                events = await collect(router, chat(f"c{i}", f"call {i} says hi", program=program))
                assert "".join(e.text for e in events) == f"call {i} says hi"
                outcomes["finished"] += 1

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, i)
        assert outcomes == {"finished": 32, "abandoned": 16, "rejected": 12}
        assert [s.live_calls for s in router.engines()] == [0, 0]
        assert [router.balancer.load(r.engine_id) for r in replicas] == [0, 0]
        for replica in replicas:
            await replica.check_health()  # refreshes the worker's stats
            assert (replica.stats().running, replica.stats().kv_blocks_used) == (0, 0)
        served = sum(len(entry.records()) for entry in router.table.programs())
        assert served == 60


@pytest.mark.slow  # imports torch
def test_the_engine_starts_a_program_at_the_service_the_router_reports() -> None:
    from tests.conftest import make_tiny_loaded

    from agentrt.engine import EngineConfig, LLMEngine
    from agentrt.scheduling import SchedulerConfig

    scheduler = SchedulerConfig(policy="plas", service_unit="tokens")
    engine = LLMEngine(
        EngineConfig(dtype="float32", num_kv_blocks=32, scheduler=scheduler), make_tiny_loaded()
    )
    elsewhere = ProgramTag(program_id="p", attained_service=1000.0)
    (seq,) = engine.add_request("c1", [1, 2, 3], SamplingParams(max_tokens=2), program=elsewhere)
    entry = engine.scheduler.table.get("p")
    assert entry is not None and entry.service == 1000.0
    assert seq.call.level > 0  # not the top queue: the program is long already
    (fresh,) = engine.add_request(
        "c2", [1, 2, 3], SamplingParams(max_tokens=2), program=ProgramTag(program_id="q")
    )
    assert fresh.call.level == 0


async def test_workers_log_at_the_level_and_format_the_server_was_given(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from agentrt.log import configure_logging

    spec = EngineSpec(factory=ECHO)
    try:
        configure_logging("warning", "json")
        async with Router([ProcessBackend("quiet", spec)]):
            pass
        assert "worker_ready" not in capfd.readouterr().err
        configure_logging("info", "json")
        async with Router([ProcessBackend("chatty", spec)]):
            pass
        assert '"event": "worker_ready"' in capfd.readouterr().err
    finally:
        configure_logging()


async def test_a_frozen_replica_is_caught_by_the_health_check_and_replaced() -> None:
    spec = EngineSpec(factory=ECHO, options={"token_delay": 0.05})
    frozen = ProcessBackend("r0", spec, shutdown_timeout=0.5)
    config = RouterConfig(health_interval_s=0.2, health_timeout_s=0.5, restart_backoff_s=0.2)
    async with Router([frozen], config=config) as router:
        stream = router.generate(chat("c1", "w " * 100))
        await stream.__anext__()
        old_pid = frozen.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGSTOP)  # alive but answering nothing, like a wedged engine
        try:
            with (
                anyio.fail_after(10),
                pytest.raises(EngineUnavailable, match="health check timed out"),
            ):
                async for _ in stream:
                    pass
            await eventually(lambda: router.engines()[0].up and frozen.pid != old_pid, within=30)
            events = await collect(router, chat("c2", "fresh worker"))
            assert "".join(e.text for e in events) == "fresh worker"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old_pid, signal.SIGKILL)
