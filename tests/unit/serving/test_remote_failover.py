"""A remote server that dies mid-stream: its calls fail at once, and the router reconnects when it is back.

The remote is a real ``agentrt serve`` process (model-free echo engine) that
the test kills with SIGKILL, as a crashed vLLM or a lost node would be.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from tests.polling import eventually

from agentrt.protocol.engine import EngineUnavailable, GenerationRequest, SamplingParams
from agentrt.serving.router import Router, RouterConfig
from agentrt.serving.router.backends import RemoteBackend, parse_backend

FAST = RouterConfig(health_interval_s=0.1, health_timeout_s=2.0, restart_backoff_s=0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@asynccontextmanager
async def agentrt_serve(port: int, config: Path) -> AsyncIterator[Process]:
    command = [
        sys.executable,
        "-m",
        "agentrt.cli",
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
    ]
    process = await anyio.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
    )
    try:
        await eventually(lambda: _port_open(port) or process.returncode is not None, within=60)
        assert process.returncode is None, "agentrt serve exited at startup"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


def chat(call_id: str, text: str) -> GenerationRequest:
    return GenerationRequest(
        call_id=call_id,
        model="echo",
        messages=[{"role": "user", "content": text}],
        sampling=SamplingParams(),
    )


async def test_a_killed_server_fails_its_calls_promptly_and_is_reconnected(tmp_path: Path) -> None:
    config = tmp_path / "remote.toml"
    config.write_text(
        '[server]\nengine_factory = "agentrt.testing.echo:EchoEngine"\n'
        "engine_options = { token_delay = 0.05 }\nlog_requests = false\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    remote = RemoteBackend("r", parse_backend(f"vllm+http://127.0.0.1:{port}"))
    async with agentrt_serve(port, config) as server, Router([remote], config=FAST) as router:
        stream = router.generate(chat("c1", "w " * 200))
        await stream.__anext__()
        server.send_signal(signal.SIGKILL)
        with anyio.fail_after(5), pytest.raises(EngineUnavailable):
            async for _ in stream:
                pass
        await eventually(lambda: not router.engines()[0].up)
        with pytest.raises(EngineUnavailable, match="no engine is available"):
            async for _ in router.generate(chat("c2", "x")):
                pass

        async with agentrt_serve(port, config):  # the server is back: the router reconnects
            await eventually(lambda: router.engines()[0].up, within=30)
            events = [e async for e in router.generate(chat("c3", "hi there"))]
            assert "".join(e.text for e in events) == "hi there"
