"""``agentrt bench relay``: the CPU agentrt spends per token relaying a remote engine's stream.

agentrt in front of llama.cpp's server shares the host's cores with it, so
every microsecond agentrt spends per relayed token is taken from the engine.
This measures that cost with the engine taken out: a source process streams
pre-encoded OpenAI chat chunks (llama.cpp's shape) as fast as loopback
carries them, and this process reads ``--calls`` streams of ``--tokens``
chunks each, ``--concurrency`` at a time, through each layer in turn:

- ``httpx``: the stream read line by line and each chunk parsed as JSON (the floor
  any client pays);
- ``backend``: :class:`RemoteBackend` turning chunks into token events;
- ``router``: the router over that backend (admission, accounting, the
  per-step cancel scope).

Each row is this process's CPU time (user + system) per token, the best of
``--repeats``; the source's CPU is not counted.
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

import msgspec

SOURCE = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
tokens = int(sys.argv[2])
chunk = (b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" word"}}],'
         b'"created":1,"id":"chatcmpl-x","model":"m","system_fingerprint":"b1","object":"chat.completion.chunk"}\\n\\n')
last = (b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1,"id":"chatcmpl-x",'
        b'"model":"m","object":"chat.completion.chunk"}\\n\\n'
        b'data: {"choices":[],"created":1,"id":"chatcmpl-x","model":"m","object":"chat.completion.chunk",'
        b'"usage":{"completion_tokens":%d,"prompt_tokens":8,"total_tokens":%d}}\\n\\ndata: [DONE]\\n\\n'
        % (tokens, tokens + 8))
async def stream():
    for _ in range(tokens):
        yield chunk
    yield last
async def chat(request):
    await request.body()
    return StreamingResponse(stream(), media_type="text/event-stream")
async def models(request):
    return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})
async def health(request):
    return JSONResponse({"status": "ok"})
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                        Route("/v1/models", models), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


class RelayRow(msgspec.Struct, kw_only=True):
    layer: str
    cpu_us_per_token: float
    wall_us_per_token: float


class RelayResult(msgspec.Struct, kw_only=True):
    tokens: int
    calls: int
    concurrency: int
    rows: list[RelayRow]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=500, help="chunks per streamed call")
    parser.add_argument("--calls", type=int, default=16, help="calls per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="calls streaming at once")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per layer (best kept)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")


@contextmanager
def source(tokens: int) -> Iterator[str]:
    """The chunk source on a free loopback port, in its own process."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", SOURCE, str(port), str(tokens)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the relay benchmark's chunk source did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def request(call_id: str) -> Any:
    from agentrt.protocol.engine import GenerationRequest, ProgramTag

    return GenerationRequest(
        call_id=call_id,
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        program=ProgramTag(program_id=f"p-{call_id}", thread_id="main"),
    )


async def measure(
    call: Callable[[str], Awaitable[int]], calls: int, concurrency: int, label: str
) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, tokens) of ``calls`` calls, ``concurrency`` at a time."""
    import anyio

    counted = 0
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        nonlocal counted
        async with limiter:
            tokens = await call(f"{label}-{i}")
        counted += tokens

    cpu, wall = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
    return time.process_time() - cpu, time.perf_counter() - wall, counted


async def run_layers(url: str, args: argparse.Namespace) -> list[RelayRow]:
    import httpx

    from agentrt.scheduling import SchedulerConfig
    from agentrt.serving.router import Router
    from agentrt.serving.router.backends import RemoteBackend, parse_backend

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def plain(call_id: str) -> int:
            tokens = 0
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        tokens += bool(json.loads(line[6:])["choices"])
            return tokens - 1  # the finishing chunk carries no token

        backend = RemoteBackend("relay", parse_backend(f"openai+{url}"))
        scheduler = SchedulerConfig(policy="plas")
        async with Router([backend], scheduler=scheduler) as router:

            async def via(client_: Any, call_id: str) -> int:
                tokens = 0
                async for event in client_.generate(request(call_id)):
                    tokens += event.finish_reason is None
                return tokens

            layers: dict[str, Callable[[str], Awaitable[int]]] = {
                "httpx": plain,
                "backend": lambda c: via(backend, c),
                "router": lambda c: via(router, c),
            }
            best: dict[str, tuple[float, float, int]] = {}
            for _ in range(args.repeats):
                for label, call in layers.items():  # taking turns spreads background drift
                    got = await measure(call, args.calls, args.concurrency, label)
                    if label not in best or got[0] < best[label][0]:
                        best[label] = got
    rows = []
    for label, (cpu, wall, tokens) in best.items():
        if tokens != args.calls * args.tokens:
            raise RuntimeError(
                f"{label} relayed {tokens} tokens, expected {args.calls * args.tokens}"
            )
        rows.append(
            RelayRow(
                layer=label,
                cpu_us_per_token=1e6 * cpu / tokens,
                wall_us_per_token=1e6 * wall / tokens,
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    import anyio
    from rich.console import Console
    from rich.table import Table

    if min(args.tokens, args.calls, args.concurrency, args.repeats) < 1:
        Console().print(
            "[red]error:[/red] --tokens, --calls, --concurrency and --repeats must be >= 1"
        )
        return 2
    with source(args.tokens) as url:
        rows = anyio.run(run_layers, url, args)
    table = Table(
        title=f"relaying {args.calls} streams x {args.tokens} chunks, {args.concurrency} at a time "
        f"(this process's CPU per token, best of {args.repeats})"
    )
    for column in ("layer", "CPU us/token", "wall us/token"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for row in rows:
        table.add_row(row.layer, f"{row.cpu_us_per_token:.1f}", f"{row.wall_us_per_token:.1f}")
    Console().print(table)
    if args.json:
        result = RelayResult(
            tokens=args.tokens, calls=args.calls, concurrency=args.concurrency, rows=rows
        )
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    return 0
