"""The app over the real embedded engine (tiny random Llama): hang-ups free KV, scheduling shows end to end.

The tiny model has no tokenizer, so calls use token-id prompts on
``/v1/completions`` and ask for logprobs to get one SSE chunk per token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
from tests.conftest import make_tiny_loaded
from tests.polling import eventually
from tests.unit.serving.inprocess_clients import async_client, sync_client

from agentrt.engine import AsyncEngine, EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.protocol.engine import EngineStats
from agentrt.scheduling import SchedulerConfig
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.serving.inprocess import AppRunner
from agentrt.sim.fit import fit_moments

MODEL = "tiny-llama"
NO_EOS = {"ignore_eos": True}


def tiny_app(policy: str, **engine: Any) -> tuple[Any, AsyncEngine]:
    scheduler = SchedulerConfig(
        policy=policy, service_unit="tokens", first_boundary=32, first_quantum=32
    )  # type: ignore[arg-type]
    config = EngineConfig(
        dtype="float32", num_kv_blocks=512, block_size=4, scheduler=scheduler, **engine
    )
    async_engine = AsyncEngine(LLMEngine(config, make_tiny_loaded()))
    return create_app(async_engine, ServerConfig(log_requests=False)), async_engine


@pytest.fixture
def plas_app() -> Iterator[tuple[Any, AsyncEngine]]:
    app, engine = tiny_app("plas")
    yield app, engine
    AppRunner.for_app(app).close()


async def test_a_client_hanging_up_aborts_the_call_and_frees_every_kv_block(
    plas_app: tuple[Any, AsyncEngine],
) -> None:
    app, engine = plas_app
    client = async_client(app)
    stream = await client.completions.create(
        model=MODEL,
        prompt=list(range(1, 40)),
        max_tokens=900,
        logprobs=1,
        stream=True,
        extra_body=NO_EOS,
    )
    async for _chunk in stream:
        break
    assert engine.stats().kv_blocks_used > 0
    await stream.close()
    await eventually(lambda: engine.stats().kv_blocks_used == 0 and engine.stats().running == 0)
    assert engine.stats().generated_tokens < 900  # stopped long before its max_tokens


def test_bad_requests_leave_the_real_engine_clean(plas_app: tuple[Any, AsyncEngine]) -> None:
    app, engine = plas_app
    client = sync_client(app)
    for max_tokens in (5000, 0):
        with pytest.raises(Exception, match="Error code: 400"):
            client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=max_tokens)
    reply = client.completions.create(
        model=MODEL, prompt=[1, 2, 3], max_tokens=4, extra_body=NO_EOS
    )
    assert reply.usage.completion_tokens == 4
    assert engine.stats().kv_blocks_used == 0


def test_the_engine_reports_the_step_time_sums_its_cost_model_is_fitted_from(
    plas_app: tuple[Any, AsyncEngine],
) -> None:
    app, engine = plas_app
    client = sync_client(app)
    for n in (3, 40, 90):  # prompts of different lengths (no shared prefix), then decodes
        client.completions.create(model=MODEL, prompt=[n] * n, max_tokens=6, extra_body=NO_EOS)
    http = client._client  # the in-process transport of the openai client
    reply = http.get(f"{client.base_url}engine/stats", headers={"Authorization": "Bearer none"})
    assert reply.status_code == 200
    stats = msgspec.json.decode(reply.content, type=EngineStats)
    moments = stats.step_moments
    assert moments.steps == stats.steps == engine.stats().steps > 0
    # Features summed over steps: 133 prompt tokens fed, 3 x 5 single-token decodes.
    assert moments.xy[0] > 0 and moments.xx[1] == 133 and moments.xx[2] == 15
    fit = fit_moments(moments)
    assert all(v >= 0 for v in fit.coefficients.values()) and fit.steps == moments.steps


async def finish_order(policy: str) -> list[str]:
    """Three long programs with service behind them, then a short program's first call: who finishes first?"""
    app, engine = tiny_app(policy, max_num_seqs=1)
    client = async_client(app)
    order: list[str] = []

    async def call(program: str, max_tokens: int, *, record: bool) -> None:
        await client.completions.create(
            model=MODEL,
            prompt=[1, 2, 3, 4],
            max_tokens=max_tokens,
            extra_body=NO_EOS,
            extra_headers={"x-agentrt-program": program},
        )
        if record:
            order.append(program)

    try:
        for i in range(3):  # each long program has already received 100 tokens of service
            await call(f"long-{i}", 100, record=False)
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(lambda i=i: call(f"long-{i}", 300, record=True))
            await eventually(lambda: engine.stats().running + engine.stats().waiting == 3)
            tg.start_soon(lambda: call("short", 5, record=True))
    finally:
        await anyio.to_thread.run_sync(AppRunner.for_app(app).close)
    return order


async def test_with_plas_a_short_program_behind_long_ones_finishes_first() -> None:
    order = await finish_order("plas")
    assert order[0] == "short", order


async def test_with_fcfs_the_same_short_program_waits_for_the_long_ones() -> None:
    order = await finish_order("fcfs")
    assert order[-1] == "short", order
