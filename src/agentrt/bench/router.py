"""``agentrt bench router``: what the router, a replica process and the HTTP server add to one call.

A trivial engine (``EchoEngine``: no model, no delay) answers ``--tokens``
tokens per call, and the same sequential calls go through each layer in
one run:

- ``engine``: ``EchoEngine.generate`` called directly (the baseline);
- ``router``: the :class:`~agentrt.serving.router.Router` over that engine in this process;
- ``router+worker``: the router over the engine in a worker process (``--replicas``);
- ``http``: the OpenAI app over the engine, on uvicorn on loopback, called
  with a streaming ``/v1/chat/completions`` (httpx, SSE read to ``[DONE]``);
- ``http+router``: the same app over the router (what ``agentrt serve`` runs).

Each row gives p50/p99 latency per call and the overhead over the baseline
(p50 difference, and the ratio). Calls are sequential and interleaved (one
call per layer per round, all layers up at once), so the figures are
per-call cost, not throughput, and a busy spell on a shared machine hits
every layer alike.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from agentrt.protocol.engine import EngineClient, GenerationRequest, SamplingParams

ECHO = "agentrt.testing.echo:EchoEngine"


class LayerResult(msgspec.Struct, kw_only=True):
    layer: str
    calls: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    overhead_p50_ms: float  # p50 minus the direct engine's p50
    ratio_p50: float  # p50 over the direct engine's p50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=500, help="timed calls per layer")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per layer first")
    parser.add_argument("--tokens", type=int, default=16, help="tokens the engine streams per call")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def _request(i: int, tokens: int) -> GenerationRequest:
    text = " ".join(f"w{j}" for j in range(tokens))
    return GenerationRequest(
        call_id=f"bench-{i}",
        model="echo",
        messages=[{"role": "user", "content": text}],
        sampling=SamplingParams(max_tokens=tokens),
    )


async def time_calls(
    call: Callable[[int], Awaitable[None]], warmup: int, calls: int
) -> list[float]:
    """Seconds per call of ``calls`` sequential calls, after ``warmup`` untimed ones."""
    for i in range(warmup):
        await call(-1 - i)
    seconds = []
    for i in range(calls):
        start = time.perf_counter()
        await call(i)
        seconds.append(time.perf_counter() - start)
    return seconds


async def time_interleaved(
    callers: dict[str, Callable[[int], Awaitable[None]]], warmup: int, calls: int
) -> dict[str, list[float]]:
    """Round-robin over the layers, one call each per round, so that load on a shared machine
    falls on every layer alike instead of on whichever ran during a busy spell."""
    for i in range(warmup):
        for call in callers.values():
            await call(-1 - i)
    seconds: dict[str, list[float]] = {name: [] for name in callers}
    for i in range(calls):
        for name, call in callers.items():
            start = time.perf_counter()
            await call(i)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def engine_caller(engine: EngineClient, tokens: int) -> Callable[[int], Awaitable[None]]:
    async def call(i: int) -> None:
        async for _ in engine.generate(_request(i, tokens)):
            pass

    return call


def http_caller(client: Any, tokens: int) -> Callable[[int], Awaitable[None]]:
    body = {
        "model": "echo",
        "stream": True,
        "max_tokens": tokens,
        "messages": _request(0, tokens).messages,
    }

    async def call(i: int) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    return
        raise RuntimeError("stream ended without [DONE]")

    return call


@asynccontextmanager
async def _http_client(engine: EngineClient) -> AsyncIterator[Any]:
    import httpx
    import uvicorn

    from agentrt.serving.config import ServerConfig
    from agentrt.serving.http.app import create_app

    app = create_app(engine, ServerConfig(log_requests=False), close_engine=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect at once: they wait in the backlog until uvicorn accepts
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
        server.should_exit = True


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    from agentrt.serving.router import Router
    from agentrt.serving.router.backends import EngineSpec, LocalBackend, ProcessBackend
    from agentrt.testing.echo import EchoEngine

    tokens = args.tokens
    async with AsyncExitStack() as stack:
        local = await stack.enter_async_context(Router([LocalBackend("local", EchoEngine())]))
        worker = await stack.enter_async_context(
            Router([ProcessBackend("worker", EngineSpec(factory=ECHO))])
        )
        http = await stack.enter_async_context(_http_client(EchoEngine()))
        routed = await stack.enter_async_context(Router([LocalBackend("local", EchoEngine())]))
        http_router = await stack.enter_async_context(_http_client(routed))
        callers = {
            "engine": engine_caller(EchoEngine(), tokens),
            "router": engine_caller(local, tokens),
            "router+worker": engine_caller(worker, tokens),
            "http": http_caller(http, tokens),
            "http+router": http_caller(http_router, tokens),
        }
        return await time_interleaved(callers, args.warmup, args.calls)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(timings: dict[str, list[float]]) -> list[LayerResult]:
    base = _percentile(timings["engine"], 0.5)
    rows = []
    for layer, seconds in timings.items():
        p50 = _percentile(seconds, 0.5)
        rows.append(
            LayerResult(
                layer=layer,
                calls=len(seconds),
                p50_ms=p50 * 1e3,
                p99_ms=_percentile(seconds, 0.99) * 1e3,
                mean_ms=sum(seconds) / len(seconds) * 1e3,
                overhead_p50_ms=(p50 - base) * 1e3,
                ratio_p50=p50 / base if base > 0 else float("inf"),
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = summarize(anyio.run(_measure, args))
    table = Table(
        title=f"per-call latency, {args.tokens} tokens streamed per call, {args.calls} sequential calls"
    )
    for name in ("layer", "p50 ms", "p99 ms", "mean ms", "overhead p50 ms", "x engine p50"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    for r in rows:
        table.add_row(
            r.layer,
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.mean_ms:.3f}",
            f"{r.overhead_p50_ms:+.3f}",
            f"{r.ratio_p50:.1f}",
        )
    Console().print(table)
    if args.json is not None:
        payload = {"tokens": args.tokens, "calls": args.calls, "layers": msgspec.to_builtins(rows)}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
