"""``agentrt bench http``: what the OpenAI app costs per call, in-process and over loopback HTTP.

The complement of ``agentrt bench router`` (which times the router, a
replica process and uvicorn against the engine): here the same trivial
engine (``EchoEngine``, no model, no delay) is reached the ways a client of
agentrt reaches it, in one run, with sequential streaming
``/v1/chat/completions`` calls read to ``[DONE]``:

- ``engine``: ``EchoEngine.generate`` called directly (the baseline);
- ``router``: the router over that engine, called directly (its own cost, for scale);
- ``inprocess-async``: the app over the engine through :class:`AsyncASGITransport` (no socket);
- ``inprocess-sync``: the same through :class:`SyncASGITransport` from a plain thread;
- ``http``: ``agentrt serve`` over the engine in its own process, loopback TCP, httpx client;
- ``openai-inprocess`` / ``openai-http``: the official ``openai.AsyncOpenAI`` client on
  the in-process transport and over loopback (adds the client's own request building
  and response parsing).

Each row: p50/p99 per call and the overhead over the direct engine call.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from agentrt.bench.router import (
    ECHO,
    LayerResult,
    engine_caller,
    http_caller,
    summarize,
    time_calls,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=500, help="timed calls per layer")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per layer first")
    parser.add_argument("--tokens", type=int, default=16, help="tokens the engine streams per call")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def _words(tokens: int) -> str:
    return " ".join(f"w{j}" for j in range(tokens))


def _openai_caller(client: Any, tokens: int) -> Callable[[int], Awaitable[None]]:
    messages = [{"role": "user", "content": _words(tokens)}]

    async def call(i: int) -> None:
        stream = await client.chat.completions.create(
            model="echo", messages=messages, max_tokens=tokens, stream=True
        )
        async for _ in stream:
            pass

    return call


def _time_sync_calls(app: Any, tokens: int, warmup: int, calls: int) -> list[float]:
    """Sequential streaming calls through the sync transport, timed in this (non-event-loop) thread."""
    from agentrt.serving.inprocess import SyncASGITransport, http

    body = {
        "model": "echo",
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": _words(tokens)}],
    }
    seconds: list[float] = []
    with http.Client(transport=SyncASGITransport(app), base_url="http://bench") as client:
        for i in range(warmup + calls):
            start = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        break
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    return seconds


@contextmanager
def _serve_subprocess() -> Iterator[str]:
    """``agentrt serve`` over the EchoEngine in its own process (so client and server do not share a loop)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "agentrt.cli",
        "--log-level",
        "warning",
        "serve",
        "--port",
        str(port),
        "--engine-factory",
        ECHO,
        "--max-concurrent-requests",
        "64",
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agentrt serve did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    import httpx
    import openai

    from agentrt.serving.config import ServerConfig
    from agentrt.serving.http.app import create_app
    from agentrt.serving.inprocess import AppRunner, AsyncASGITransport, http
    from agentrt.serving.router import Router
    from agentrt.serving.router.backends import LocalBackend
    from agentrt.testing.echo import EchoEngine

    n, warmup, tokens = args.calls, args.warmup, args.tokens
    timings: dict[str, list[float]] = {}
    timings["engine"] = await time_calls(engine_caller(EchoEngine(), tokens), warmup, n)

    async with Router([LocalBackend("local", EchoEngine())]) as router:
        timings["router"] = await time_calls(engine_caller(router, tokens), warmup, n)

    # In-process: the app runs on its own loop thread; the client crosses to it per chunk batch.
    app = create_app(EchoEngine(), ServerConfig(log_requests=False))
    try:
        async with http.AsyncClient(
            transport=AsyncASGITransport(app), base_url="http://bench", timeout=60
        ) as client:
            timings["inprocess-async"] = await time_calls(http_caller(client, tokens), warmup, n)
        timings["inprocess-sync"] = await anyio.to_thread.run_sync(
            _time_sync_calls, app, tokens, warmup, n
        )
        in_process = openai.AsyncOpenAI(
            base_url="http://bench/v1",
            api_key="none",
            http_client=http.AsyncClient(transport=AsyncASGITransport(app), timeout=60),
        )
        timings["openai-inprocess"] = await time_calls(
            _openai_caller(in_process, tokens), warmup, n
        )
    finally:
        await anyio.to_thread.run_sync(AppRunner.for_app(app).close)

    with _serve_subprocess() as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            timings["http"] = await time_calls(http_caller(client, tokens), warmup, n)
        over_http = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=60)
        timings["openai-http"] = await time_calls(_openai_caller(over_http, tokens), warmup, n)
        await over_http.close()
    return timings


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    rows: list[LayerResult] = summarize(anyio.run(_measure, args))
    table = Table(
        title=f"per-call latency, streaming chat, {args.tokens} tokens per call, {args.calls} sequential calls"
    )
    for name in ("path", "p50 us", "p99 us", "overhead p50 us", "overhead p99 us", "x engine p50"):
        table.add_column(name, justify="left" if name == "path" else "right", no_wrap=name == "path")
    base_p99 = rows[0].p99_ms
    for r in rows:
        table.add_row(
            r.layer,
            f"{r.p50_ms * 1e3:.0f}",
            f"{r.p99_ms * 1e3:.0f}",
            f"{r.overhead_p50_ms * 1e3:+.0f}",
            f"{(r.p99_ms - base_p99) * 1e3:+.0f}",
            f"{r.ratio_p50:.1f}",
        )
    Console().print(table)
    if args.json is not None:
        payload = {"tokens": args.tokens, "calls": args.calls, "paths": msgspec.to_builtins(rows)}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
