"""Router failover seen by an OpenAI client over HTTP: a replica killed mid-stream.

The app over ``--replicas 2`` (what ``agentrt serve --replicas 2`` builds)
is served by uvicorn on loopback in the test's event loop, so the test can
reach the router to find the pinned replica's worker and SIGKILL it.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from tests.polling import eventually

from agentrt.serving.config import ServerConfig
from agentrt.serving.engines import open_engine
from agentrt.serving.http.app import create_app
from agentrt.serving.router import Router
from agentrt.serving.router.backends import ProcessBackend

ECHO = "agentrt.testing.echo:EchoEngine"
LONG = "word " * 3000  # past the locality threshold: the program is pinned to one replica


@asynccontextmanager
async def serve_replicas(tmp_path: Path, restart: bool) -> AsyncIterator[tuple[str, Starlette]]:
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        f"[router]\nhealth_interval_s = 0.2\nrestart = {str(restart).lower()}\nrestart_backoff_s = 0.2\n"
    )
    config = ServerConfig(
        replicas=2, engine_factory=ECHO, engine_options={"token_delay": 0.05}, log_requests=False
    )
    app = create_app(lambda: open_engine(config, config_file), config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        await eventually(lambda: server.started, within=60)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
        finally:
            server.should_exit = True


def router_of(app: Starlette) -> Router:
    router = app.state.server.engine
    assert isinstance(router, Router)
    return router


async def test_a_replica_killed_mid_stream_gives_the_client_a_503_and_the_next_call_succeeds(
    tmp_path: Path,
) -> None:
    async with serve_replicas(tmp_path, restart=True) as (url, app):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        program = {"x-agentrt-program": "prog-1"}
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": LONG}],
            max_tokens=1,
            extra_headers=program,
        )
        router = router_of(app)
        pinned = next(e for e in router.table.programs() if e.program_id == "prog-1").engine_id
        assert pinned is not None
        worker = router._engines[pinned].backend
        assert isinstance(worker, ProcessBackend) and worker.pid is not None

        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": LONG}],
            stream=True,
            extra_headers=program,
        )
        first = await stream.__anext__()
        assert first.choices
        os.kill(worker.pid, signal.SIGKILL)
        with anyio.fail_after(10), pytest.raises(openai.APIError, match="unavailable"):
            async for _ in stream:
                pass

        answer = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "still here?"}],
            extra_headers=program,
        )
        assert answer.choices[0].message.content == "still here?"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/health")).status_code == 200


async def test_with_every_replica_dead_calls_and_health_answer_503(tmp_path: Path) -> None:
    async with serve_replicas(tmp_path, restart=False) as (url, app):
        router = router_of(app)
        for status in router.engines():
            worker = router._engines[status.engine_id].backend
            assert isinstance(worker, ProcessBackend) and worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
        await eventually(lambda: not any(s.up for s in router.engines()))
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}]
            )
        assert failed.value.status_code == 503
        assert "no engine is available" in str(failed.value)
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{url}/health")
        assert health.status_code == 503
        assert health.json()["error"]["type"] == "service_unavailable"
