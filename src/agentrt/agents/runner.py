"""Running one reference agent from the command line: shared flags, connection, summary.

Every agent module's ``main`` builds its parser with :func:`agent_arguments`
and runs its program with :func:`run_agent`, which connects to ``--base-url``
(any OpenAI-compatible server) or, with ``--embedded``, to an in-process
agentrt server with the default model, and prints what the program cost.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import agentrt
from agentrt.agents.llm import LLM
from agentrt.agents.trace import Trace


def agent_arguments(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc.strip() else None)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--base-url", default=None, help="an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    target.add_argument("--embedded", action="store_true", help="run an agentrt engine in this process (default)")
    parser.add_argument("--model", default=None, help="model name (default: the server's first model)")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    return parser


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[LLM]:
    """An :class:`LLM` on ``--base-url``, or on an agentrt app in this process when none is given."""
    if args.base_url is None:
        from agentrt.serving.inprocess import AppRunner

        app = agentrt.serve_in_process()  # the embedded engine with the default model
        try:
            yield _llm(args, agentrt.OpenAI(app=app), agentrt.AsyncOpenAI(app=app))
        finally:
            AppRunner.for_app(app).close()
        return
    client = agentrt.OpenAI(base_url=args.base_url, api_key=args.api_key)
    aclient = agentrt.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)
    try:
        yield _llm(args, client, aclient)
    finally:
        client.close()


def _llm(args: argparse.Namespace, client: agentrt.OpenAI, aclient: agentrt.AsyncOpenAI) -> LLM:
    model = args.model or client.models.list().data[0].id
    return LLM(model=model, client=client, aclient=aclient, temperature=args.temperature)


def run_agent(args: argparse.Namespace, program: Callable[[LLM], Any]) -> Any:
    """Run ``program(llm)`` (a sync call or a coroutine) and print its trace summary."""
    with connect(args) as llm:
        result = program(llm)
        if inspect.iscoroutine(result):
            result = asyncio.run(_finish(result, llm))
        print_summary(llm.trace)
    return result


async def _finish(coroutine: Any, llm: LLM) -> Any:
    try:
        return await coroutine
    finally:
        if llm.aclient is not None:
            await llm.aclient.close()


def print_summary(trace: Trace) -> None:
    calls = trace.calls
    if not calls:
        print("no LLM calls")
        return
    span = max(c.end for c in calls) - min(c.start for c in calls)
    ttfts = [c.ttft for c in calls if c.ttft is not None]
    print(
        f"{len(calls)} LLM calls, {len(trace.tools)} tool calls, "
        f"{trace.prompt_tokens} prompt + {trace.completion_tokens} completion tokens, "
        f"{span:.1f} s; mean TTFT {sum(ttfts) / max(len(ttfts), 1):.2f} s"
    )
