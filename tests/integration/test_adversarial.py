"""Bad input and rude clients against the app over the real embedded engine (tiny random Llama).

The rule: bad input gets an OpenAI error body with a 4xx, and nothing a
client does (hang up at any moment, storm the server) leaves a crashed
server, a leaked KV block, a busy server slot or a hung response behind.
"""

from __future__ import annotations

import asyncio
import random
import threading
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from tests.integration.test_serving_engine import MODEL, NO_EOS, plas_app  # noqa: F401
from tests.polling import eventually
from tests.unit.serving.inprocess_clients import async_client, raw_client

from agentrt.engine import AsyncEngine
from agentrt.engine.chat import encode_chat
from agentrt.protocol.engine import InvalidRequest
from agentrt.serving.http.toolcalls import parse_tool_calls
from agentrt.serving.inprocess import AppRunner

USER = {"role": "user", "content": "hi"}
DEEP_JSON = "[" * 5000 + "]" * 5000  # nested past any recursion limit, a few KB


def deep_dict(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth):
        node["a"] = node = {}
    return root


def with_tool_call(arguments: str) -> list[dict[str, Any]]:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [USER, {"role": "assistant", "tool_calls": [call]}]


def is_idle(app: Any, engine: AsyncEngine) -> bool:
    stats = engine.stats()
    return (
        app.state.server.limiter.running == 0
        and stats.kv_blocks_used == 0
        and stats.running + stats.waiting + stats.swapped == 0
    )


async def assert_still_serves(app: Any) -> None:
    reply = await async_client(app).completions.create(
        model=MODEL, prompt=[1, 2, 3], max_tokens=4, extra_body=NO_EOS
    )
    assert reply.usage.completion_tokens == 4


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/programs"])
def test_a_deeply_nested_body_is_a_400_not_a_500(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
    path: str,
) -> None:
    app, _ = plas_app
    depth = 100_000  # well inside the body limit; every level is one more recursion when decoding
    body = b'{"model": "tiny-llama", "x": ' + b"[" * depth + b"]" * depth + b"}"
    reply = raw_client(app).post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "invalid_json"


def test_deeply_nested_tool_call_arguments_are_a_400_not_a_500(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    app, _ = plas_app
    body = {"model": MODEL, "messages": with_tool_call(DEEP_JSON)}
    reply = raw_client(app).post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text


@pytest.mark.parametrize(
    ("messages", "tools"),
    [
        ([USER], [{"type": "function", "function": {"name": "f", "parameters": deep_dict(5000)}}]),
        (with_tool_call(DEEP_JSON), None),
    ],
    ids=["tool parameters", "tool call arguments"],
)
def test_the_engine_refuses_a_chat_nested_deeper_than_it_can_render(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> None:
    tokenizer = SimpleNamespace(chat_template="{{ messages }}")  # fails before it renders anything
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        encode_chat(tokenizer, messages, tools)


@pytest.mark.parametrize("output", [DEEP_JSON, "<tool_call>" + DEEP_JSON + "</tool_call>"])
def test_model_output_nested_too_deeply_is_text_not_a_tool_call(output: str) -> None:
    assert parse_tool_calls(output, {"f"}) == (output, [])


def test_a_program_cannot_start_without_an_id(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    app, _ = plas_app
    client = raw_client(app)
    reply = client.post("/v1/programs", json={"program_id": ""})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "program_id"
    assert client.get("/v1/programs").json()["data"] == []


def test_a_program_id_is_kept_as_the_headers_read_it(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    app, _ = plas_app
    client = raw_client(app)
    assert client.post("/v1/programs", json={"program_id": " p1 "}).json()["id"] == "p1"
    assert client.delete("/v1/programs/p1").status_code == 200


async def test_a_client_cancelled_as_its_response_starts_frees_its_server_slot(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app's loop has handed the response over, but the client is cancelled before it sees it."""
    app, engine = plas_app
    runner = AppRunner.for_app(app)
    called, proceed, returned = threading.Event(), threading.Event(), threading.Event()
    open_exchange = runner.open

    async def open_and_signal(*args: Any) -> Any:
        called.set()
        proceed.wait(10)  # hold the app's loop until the test's loop is about to block
        try:
            return await open_exchange(*args)
        finally:
            returned.set()

    monkeypatch.setattr(runner, "open", open_and_signal)
    client = async_client(app)
    call = asyncio.create_task(
        client.completions.create(
            model=MODEL,
            prompt=list(range(1, 20)),
            max_tokens=500,
            logprobs=1,
            stream=True,
            extra_body=NO_EOS,
        )
    )
    await eventually(called.is_set)
    proceed.set()
    assert returned.wait(10)  # blocks this loop: the client cannot take the response in time
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: is_idle(app, engine))
    await assert_still_serves(app)


async def test_a_storm_of_calls_a_third_of_them_cancelled_leaves_the_engine_idle_and_clean(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    """120 calls at once (streamed or not, n up to 3, 12 programs) preempt each other; some hang up."""
    app, engine = plas_app
    client = async_client(app)
    rng = random.Random(7)
    failures: list[str] = []

    async def call(i: int) -> None:
        n, max_tokens, stream = rng.choice([1, 1, 2, 3]), rng.randint(1, 60), rng.random() < 0.6
        hang_up_after = rng.random() * 0.5 if rng.random() < 0.33 else None
        request: dict[str, Any] = dict(
            model=MODEL,
            prompt=[rng.randint(1, 255) for _ in range(rng.randint(1, 60))],
            max_tokens=max_tokens,
            n=n,
            extra_body={**NO_EOS, "temperature": rng.choice([0.0, 1.0])},
            extra_headers={"x-agentrt-program": f"p{i % 12}"},
        )
        with anyio.move_on_after(hang_up_after if hang_up_after is not None else 60):
            if stream:
                chunks = await client.completions.create(stream=True, logprobs=1, **request)
                finished = 0
                async for chunk in chunks:
                    finished += sum(c.finish_reason is not None for c in chunk.choices)
                if finished != n:
                    failures.append(f"call {i}: {finished} of {n} choices finished")
            else:
                reply = await client.completions.create(**request)
                if reply.usage.completion_tokens != n * max_tokens:
                    failures.append(f"call {i}: {reply.usage}")
            return
        if hang_up_after is None:
            failures.append(f"call {i} hung")

    async with anyio.create_task_group() as tg:
        for i in range(120):
            tg.start_soon(call, i)
    assert not failures
    await eventually(lambda: is_idle(app, engine))
    assert engine.stats().preemptions_swap + engine.stats().preemptions_recompute > 0
    await assert_still_serves(app)


async def test_a_top_k_no_int64_holds_is_a_400_and_the_engine_serves_on(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    app, _ = plas_app
    body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4, "top_k": 2**63}
    reply = raw_client(app).post("/v1/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "top_k"
    await assert_still_serves(app)
    assert raw_client(app).get("/health").status_code == 200


def test_health_is_a_503_once_the_engine_has_failed_for_good(
    plas_app: tuple[Any, AsyncEngine],  # noqa: F811
) -> None:
    app, engine = plas_app
    client = raw_client(app)
    assert client.get("/health").status_code == 200

    def broken(batch: Any) -> Any:
        raise RuntimeError("device lost")

    engine.engine.runner.execute = broken  # type: ignore[method-assign]
    reply = client.post("/v1/completions", json={"model": MODEL, "prompt": [1, 2], "max_tokens": 2})
    assert reply.status_code == 503
    health = client.get("/health")
    assert health.status_code == 503
    assert "device lost" in health.json()["error"]["message"]
