"""The real SmolLM2-135M-Instruct behind ``agentrt serve`` and behind the in-process app (slow).

Greedy decoding answers the capital-of-France question with "Paris"; the
official clients get it plain and streamed, over loopback HTTP and without
a socket; a client that hangs up mid-answer leaves no KV block in use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.e2e.live_server import agentrt_serve
from tests.polling import eventually

import agentrt
from agentrt.serving.inprocess import AppRunner

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: dict[str, Any] = {"temperature": 0.0, "max_tokens": 24}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("smollm2") / "serve.log"
    with agentrt_serve(startup_timeout=600, log_path=log) as url:  # no arguments: the default model
        yield url


def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_the_default_server_answers_paris_plain_and_streamed(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")
    model = model_id(client)
    reply = client.chat.completions.create(model=model, messages=QUESTION, **GREEDY)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=model, messages=QUESTION, stream=True, **GREEDY
        )
        if c.choices
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert "Paris" in streamed


async def test_the_async_client_gets_paris_and_a_hang_up_frees_the_kv(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="none")
    model = (await client.models.list()).data[0].id
    reply = await client.chat.completions.create(model=model, messages=QUESTION, **GREEDY)
    assert "Paris" in (reply.choices[0].message.content or "")
    story = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
    stream = await client.chat.completions.create(
        model=model, messages=story, max_tokens=400, stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    await eventually(lambda: metric(server, "agentrt:num_requests_running") == 0, within=30)
    assert metric(server, "agentrt:kv_cache_blocks_used") == 0


@pytest.fixture(scope="module")
def in_process_app() -> Iterator[Any]:
    app = agentrt.serve_in_process()
    yield app
    AppRunner.for_app(app).close()


def test_in_process_sync_and_async_clients_answer_paris(in_process_app: Any) -> None:
    import anyio

    client = agentrt.OpenAI(app=in_process_app)
    model = model_id(client)
    reply = client.chat.completions.create(model=model, messages=QUESTION, **GREEDY)
    assert "Paris" in (reply.choices[0].message.content or "")

    async def streamed() -> str:
        aclient = agentrt.AsyncOpenAI(app=in_process_app)
        stream = await aclient.chat.completions.create(
            model=model, messages=QUESTION, stream=True, **GREEDY
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert "Paris" in anyio.run(streamed)


def test_the_example_config_serves(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "server" / "agentrt.toml"
    with agentrt_serve(
        "--config", str(example), startup_timeout=600, log_path=tmp_path / "serve.log"
    ) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-change-me")
        reply = client.chat.completions.create(model=model_id(client), messages=QUESTION, **GREEDY)
    assert "Paris" in (reply.choices[0].message.content or "")


def test_tools_reach_the_real_chat_template(server: str) -> None:
    """SmolLM2-135M rarely calls tools, but a request with tools must render and answer in the OpenAI shape."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    reply = client.chat.completions.create(
        model=model_id(client),
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools,
        **GREEDY,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.tool_calls or choice.message.content
