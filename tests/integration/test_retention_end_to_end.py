"""KV retention end to end, on the tiny Llama: the SDK's tool signals, and the router.

SDK -> app -> embedded engine: an agent program makes a call, then runs an ``@agentrt.tool`` that takes
longer than the engine predicts (no interrupt seen yet: the prior, 1 s, on a
fake clock) and meanwhile runs three other programs whose contexts need the
agent's blocks. With retention on, the SDK's tool signal holds the agent's pin
while the tool runs, and its next call finds its whole history cached; with
retention off (LRU) the history is evicted, and with the signals switched off
the pin expires at the predicted TTL and is evicted too.

Router -> two engines: a program's next call goes back to the engine that
reported keeping its context pinned, although the other engine is less used;
and the SDK's tool signals, sent to the router, reach the engine that ran the
program's calls (and no other), which holds the program's pin through the tool.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import make_tiny_loaded

import agentrt
from agentrt.engine import AsyncEngine, EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.scheduling import RetentionConfig, SchedulerConfig
from agentrt.sdk import lifecycle
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.serving.inprocess import AppRunner

MODEL = "tiny-llama"
NO_EOS = {"ignore_eos": True}
TOOL_SECONDS = 5.0  # on the engine's fake clock; the predicted interrupt is 1 s


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_servers() -> Iterator[None]:
    lifecycle.forget_unsupported_servers()
    yield
    lifecycle.forget_unsupported_servers()


def run_agent(mode: str) -> tuple[LLMEngine, int]:
    """The agent's two calls around its tool; returns the engine and the prompt tokens
    the second call found cached."""
    clock = Clock()
    config = EngineConfig(
        dtype="float32",
        num_kv_blocks=24,
        block_size=4,
        swap_space=0,  # no host pool: a lost pin is lost, not copied back
        scheduler=SchedulerConfig(policy="fcfs"),
        retention=RetentionConfig(mode=mode, prior_interrupt_s=1.0),  # type: ignore[arg-type]
    )
    engine = LLMEngine(config, make_tiny_loaded(), clock=clock)
    app = create_app(AsyncEngine(engine), ServerConfig(log_requests=False))
    client = agentrt.OpenAI(app=app, api_key="none", max_retries=0)
    rng = random.Random(7)
    history = [rng.randrange(1, 256) for _ in range(40)]  # ten blocks
    policy = engine.block_manager.evictable

    def complete(prompt: list[int]) -> None:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body=NO_EOS)

    @agentrt.tool
    def search() -> None:
        program = agentrt.current_program()
        assert program is not None
        if lifecycle.tool_signals_enabled():
            wait_until(lambda: policy.in_tool(program.program_id))
        clock.now += TOOL_SECONDS
        for i in range(3):  # each needs eleven of the pool's 24 blocks
            with agentrt.program(f"other-{i}", detached=True):
                complete([rng.randrange(1, 256) for _ in range(40)])

    @agentrt.program
    def agent() -> int:
        complete(history)
        search()
        before = engine.block_manager.prefix_hit_tokens
        complete([*history, 7, 8, 9])
        return engine.block_manager.prefix_hit_tokens - before

    try:
        reused = agent()
        # The program's end reaches the engine after agent() returns: wait for its pins to go.
        wait_until(lambda: policy.pinned_blocks == 0, within=60.0)
    finally:
        AppRunner.for_app(app).close()
    return engine, reused


def wait_until(condition: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the engine never reached the state the test waits for")
        time.sleep(0.005)


def test_the_tool_signal_keeps_the_agents_prefix_cached_with_retention() -> None:
    engine, reused = run_agent("ttl")
    counters = engine.block_manager.evictable.counters
    assert reused == 40  # the whole history: ten blocks
    assert counters.held == 1 and counters.reused == 1 and counters.expired == 0
    stats = engine.stats()
    assert stats.recomputed_prompt_tokens == 0 and stats.kv_pins_held == 1
    assert stats.prefix_hit_tokens == 40 and stats.prefix_queried_tokens == 4 * 40 + 43
    assert engine.block_manager.evictable.pinned_blocks == 0  # the program ended


def test_lru_loses_the_prefix_during_the_tool() -> None:
    engine, reused = run_agent("off")
    assert reused == 0
    assert engine.block_manager.evictable.counters.held == 0
    assert engine.stats().recomputed_prompt_tokens == 40


def test_without_the_signal_the_pin_expires_at_its_predicted_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lifecycle.TOOL_SIGNALS_ENV, "0")
    engine, reused = run_agent("ttl")
    counters = engine.block_manager.evictable.counters
    assert reused == 0
    assert counters.held == 0 and counters.expired >= 1
    assert engine.stats().recomputed_prompt_tokens == 40


def test_the_router_sends_the_next_call_to_the_engine_that_retains_the_context() -> None:
    import anyio

    from agentrt.protocol.engine import GenerationRequest, ProgramTag, SamplingParams
    from agentrt.scheduling import BalancerConfig
    from agentrt.serving.router import Router, RouterConfig
    from agentrt.serving.router.backends import LocalBackend

    def request(
        call_id: str, program: str, prompt: list[int], max_tokens: int
    ) -> GenerationRequest:
        return GenerationRequest(
            call_id=call_id,
            prompt=prompt,
            program=ProgramTag(program_id=program),
            sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
        )

    async def run(mode: str) -> list[int]:
        """Prompt tokens each engine found cached for the agent's second call."""
        config = EngineConfig(
            dtype="float32",
            num_kv_blocks=64,
            block_size=4,
            scheduler=SchedulerConfig(policy="fcfs"),
            retention=RetentionConfig(mode=mode, prior_interrupt_s=30.0),  # type: ignore[arg-type]
        )
        engines = [AsyncEngine(LLMEngine(config, make_tiny_loaded())) for _ in range(2)]
        backends = [LocalBackend(f"e{i}", e) for i, e in enumerate(engines)]
        history = list(range(1, 41))
        fast = RouterConfig(health_interval_s=0.05, health_timeout_s=5.0)
        async with Router(
            backends, config=fast, balancer=BalancerConfig(policy="locality")
        ) as router:
            async for _ in router.generate(request("a1", "agent", history, 4)):
                pass
            # Another program's call holds e0 (its stream is left open): e0 is the busier engine.
            busy = router.generate(request("b1", "busy", list(range(100, 120)), 200))
            await busy.__anext__()
            before = [e.engine.block_manager.prefix_hit_tokens for e in engines]
            async for _ in router.generate(request("a2", "agent", [*history, 7, 8, 9], 4)):
                pass
            await busy.aclose()  # type: ignore[attr-defined]
            hits = [
                e.engine.block_manager.prefix_hit_tokens - b
                for e, b in zip(engines, before, strict=True)
            ]
        return hits

    retained_hits = anyio.run(run, "ttl")
    lru_hits = anyio.run(run, "off")
    assert retained_hits == [40, 0]  # back to e0, where the agent's history is pinned
    assert lru_hits == [0, 0]  # the least used engine, e1, has never seen it


class ListeningEngine(AsyncEngine):
    """The embedded engine, recording the tool signals it hears."""

    def __init__(self, engine: LLMEngine) -> None:
        super().__init__(engine)
        self.heard: list[tuple[str, str]] = []

    async def tool_event(self, program_id: str, event: Any) -> None:
        self.heard.append((program_id, event.state))
        await super().tool_event(program_id, event)


def run_agent_behind_a_router() -> tuple[ListeningEngine, ListeningEngine, int]:
    """:func:`run_agent`'s agent, with retention, through a router over two engines; returns
    the engine that ran the agent's calls, the other one, and the prompt tokens the agent's
    second call found cached there."""
    from agentrt.serving.router import Router, RouterConfig
    from agentrt.serving.router.backends import LocalBackend

    clock = Clock()
    config = EngineConfig(
        dtype="float32",
        num_kv_blocks=24,
        block_size=4,
        swap_space=0,
        scheduler=SchedulerConfig(policy="fcfs"),
        retention=RetentionConfig(mode="ttl", prior_interrupt_s=1.0),
    )
    engines = [
        ListeningEngine(LLMEngine(config, make_tiny_loaded(), clock=clock)) for _ in range(2)
    ]
    router = Router(
        [LocalBackend(f"e{i}", e) for i, e in enumerate(engines)],
        config=RouterConfig(health_interval_s=0.05, health_timeout_s=5.0),
    )
    app = create_app(
        lambda: router, ServerConfig(log_requests=False)
    )  # its lifespan runs the router
    client = agentrt.OpenAI(app=app, api_key="none", max_retries=0)
    rng = random.Random(7)
    history = [rng.randrange(1, 256) for _ in range(40)]
    ran: list[ListeningEngine] = []  # the engine the router sent the agent's first call to

    def complete(prompt: list[int]) -> None:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, extra_body=NO_EOS)

    @agentrt.tool
    def search() -> None:
        program = agentrt.current_program()
        assert program is not None
        if lifecycle.tool_signals_enabled():
            policy = ran[0].engine.block_manager.evictable
            wait_until(lambda: policy.in_tool(program.program_id))
        clock.now += TOOL_SECONDS
        for i in range(3):  # both engines idle: the least used, where the agent ran too
            with agentrt.program(f"other-{i}", detached=True):
                complete([rng.randrange(1, 256) for _ in range(40)])

    @agentrt.program
    def agent() -> int:
        complete(history)
        ran.extend(e for e in engines if e.engine.block_manager.prefix_queried_tokens)
        search()
        bm = ran[0].engine.block_manager
        before = bm.prefix_hit_tokens
        complete([*history, 7, 8, 9])
        return bm.prefix_hit_tokens - before

    try:
        reused = agent()
    finally:
        AppRunner.for_app(app).close()
    [other] = [e for e in engines if e is not ran[0]]
    return ran[0], other, reused


def test_the_router_forwards_tool_signals_to_the_engine_that_ran_the_program() -> None:
    ran, other, reused = run_agent_behind_a_router()
    assert reused == 40  # the agent's whole history, held through the tool where it ran
    [(program_id, _), _] = ran.heard
    assert ran.heard == [(program_id, "start"), (program_id, "end")]
    assert other.heard == []  # it never ran the agent's calls
    counters = ran.engine.block_manager.evictable.counters
    assert counters.held == 1 and counters.reused == 1
    assert ran.engine.stats().recomputed_prompt_tokens == 0


def test_behind_a_router_without_the_signals_the_pin_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lifecycle.TOOL_SIGNALS_ENV, "0")
    ran, _other, reused = run_agent_behind_a_router()
    assert reused == 0
    assert ran.heard == [] and ran.engine.block_manager.evictable.counters.held == 0
