"""ASGI middleware that adopts the caller's program on a tool server (pure ASGI, no framework).

A tool server reached over HTTP from inside a program receives the program
headers (``agentrt.propagation_headers()``, the httpx hook, or an agentrt
client). Wrapped in :class:`ProgramContextMiddleware`, the handling of such a
request runs inside the caller's program: LLM calls made there carry the same
program id, continue the caller's thread, and follow the caller's call. The
first code that uses the SDK while handling the request (the endpoint, or the
worker thread a sync endpoint runs in) continues the caller's thread; any
further thread or task forks from it, with thread ids prefixed by a random
token so they never collide with the caller's own. The tool server never ends
the program: its owner does.

Malformed program headers are answered with 400 in the OpenAI error schema.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agentrt.protocol.headers import HeaderError, parse_asgi_headers
from agentrt.sdk.context import ProgramRecord, Strand, install, new_binding, peek, restore
from agentrt.sdk.ids import short_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ProgramContextMiddleware:
    """``app = ProgramContextMiddleware(app)``: requests with program headers run in that program."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            incoming = parse_asgi_headers(scope.get("headers") or ())
        except HeaderError as exc:
            await _reject(scope, send, exc)
            return
        if incoming is None:
            await self.app(scope, receive, send)
            return
        record = ProgramRecord(
            program_id=incoming.program_id,
            name=incoming.program_name,
            owns_lifecycle=False,
            thread_prefix=f"{short_token()}.",
        )
        thread_id = incoming.thread_id or record.new_thread_id()
        # A request that is itself an LLM call (a proxy) is followed by its own call id.
        strand = Strand(record, thread_id, forked_from=incoming.call_id or incoming.parent_call_id)
        previous = peek()
        token = install(new_binding(strand, owned=False))
        try:
            await self.app(scope, receive, send)
        finally:
            restore(token, previous)


async def _reject(scope: Scope, send: Send, exc: HeaderError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": str(exc)[:120]})
        return
    body = json.dumps(
        {
            "error": {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": exc.header,
                "code": None,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
