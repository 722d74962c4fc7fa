"""``agentrt serve`` as a real process on loopback, driven by the official openai client.

The engine is the model-free EchoEngine (``--engine-factory``), so the HTTP
path is what is under test: uvicorn, SSE framing, disconnects, auth, limits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.e2e.live_server import ECHO, agentrt_serve, agentrt_serve_process
from tests.polling import eventually

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]
WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "agentrt.toml"
    config.write_text(
        "[server]\nengine_options = { token_delay = 0.02 }\nmax_queued_requests = 64\n"
    )
    with agentrt_serve(
        "--engine-factory", ECHO, "--config", str(config), log_path=folder / "serve.log"
    ) as url:
        yield url


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_sync_client_plain_and_streaming(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello over http"}]
    )
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert reply.choices[0].message.content == "hello over http"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_async_client_streams_token_by_token(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="none")
    running_seen = []
    stream = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": WORDS}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not running_seen:
            running_seen.append(metric(server, "agentrt:num_requests_running"))
    assert running_seen == [1.0]  # the first token arrived while the call was still generating


def test_tool_calls_over_http(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none")
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>'
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}], tools=TOOLS
    )
    streamed = list(
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": text}], tools=TOOLS, stream=True
        )
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Lyon"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"


async def test_a_client_that_hangs_up_mid_stream_aborts_its_call(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": WORDS}], "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content":" w1"' in line:
                    break
        # the connection is closed here, long before the 40 words are out
    await eventually(
        lambda: metric(server, 'agentrt:request_success_total{finished_reason="abort"}') == 1,
        within=10,
    )
    assert metric(server, "agentrt:num_requests_running") == 0
    assert metric(server, "agentrt:kv_cache_blocks_used") == 0


def test_errors_and_request_ids_over_http(server: str) -> None:
    bad = httpx.post(
        f"{server}/v1/chat/completions", content=b"{nope", headers={"x-request-id": "rid-7"}
    )
    unknown = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": "gpt-x", "messages": [{"role": "user", "content": "x"}]},
    )
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "rid-7"
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_api_keys_and_overload_on_a_second_server(tmp_path: Path) -> None:
    config = tmp_path / "limits.toml"
    config.write_text(
        "[server]\nengine_options = { token_delay = 0.05 }\nmax_concurrent_requests = 1\nmax_queued_requests = 0\n"
    )
    with agentrt_serve(
        "--engine-factory", ECHO, "--config", str(config), "--api-key", "sk-e2e"
    ) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-e2e", max_retries=0)
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": WORDS}], stream=True
        )
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x"}]
            )
        stream.close()
    assert info.value.response.headers["retry-after"] == "1"


def test_replicas_serve_behind_the_router(tmp_path: Path) -> None:
    with agentrt_serve(
        "--engine-factory", ECHO, "--replicas", "2", log_path=tmp_path / "serve.log"
    ) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        answers = [
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": f"call {i}"}]
            )
            .choices[0]
            .message.content
            for i in range(4)
        ]
        log = (tmp_path / "serve.log").read_text()
    assert answers == [f"call {i}" for i in range(4)]
    assert "replica-0" in log and "replica-1" in log


def test_a_model_that_cannot_load_stops_the_server_with_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentrt.cli", "serve", "--port", "0", "--model", "/no/such/model"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AGENTRT_LOG_FORMAT": "json"},
    )
    assert result.returncode != 0
    assert '"event": "engine failed to start"' in result.stderr
    assert "/no/such/model" in result.stderr


def test_a_stopping_server_cuts_streams_still_running_after_the_shutdown_timeout(
    tmp_path: Path,
) -> None:
    config = tmp_path / "agentrt.toml"
    config.write_text("[server]\nengine_options = { token_delay = 0.5 }\n")
    with agentrt_serve_process(
        "--engine-factory", ECHO, "--config", str(config), "--shutdown-timeout", "0.5"
    ) as (url, server):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": WORDS}], stream=True
        )
        first = next(iter(stream))  # the call is generating: 40 words take 20 s
        server.send_signal(signal.SIGTERM)
        received = [first]
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            received.extend(stream)  # cut mid-stream, well before its 40 words
        assert server.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert len(received) < 40
