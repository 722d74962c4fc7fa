"""A real agentrt server over the trivial ``EchoEngine``, on a loopback port, for agent and bench tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.testing.echo import EchoEngine


@contextmanager
def echo_server(
    wrap: Callable[[Any], Any] | None = None,
    *,
    engine: EchoEngine | None = None,
    **engine_options: Any,
) -> Iterator[tuple[str, EchoEngine]]:
    """Serve ``engine`` (by default an ``EchoEngine`` of ``engine_options``) over HTTP in a
    background thread; yield (base URL, engine).

    ``wrap`` puts an ASGI middleware around the app (a server that behaves otherwise)."""
    engine = engine if engine is not None else EchoEngine(**engine_options)
    app = create_app(engine, ServerConfig(log_requests=False))
    if wrap is not None:
        app = wrap(app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("echo server did not start")
        time.sleep(0.02)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        yield f"http://127.0.0.1:{port}/v1", engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
