"""An ASGI response that runs a generation while watching for the client to go away.

Starlette's ``StreamingResponse`` only notices a disconnect when it next
sends (ASGI 2.4 servers) and its non-streaming responses never do, so a
client that gives up while its call waits in the queue would keep the call,
and its KV blocks, alive. :class:`Exchange` runs the handler and a
``receive()`` watcher side by side: an ``http.disconnect`` cancels the
handler at once, whose cleanup aborts the engine call.

The handler answers through a :class:`Channel`: either one JSON body, or an
SSE stream opened once and fed event by event. Whether headers have gone
out decides how a late error is reported (JSON error vs an SSE error event).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import Message, Receive, Scope, Send

from agentrt.log import get_logger

log = get_logger("agentrt.serving")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


class Channel:
    """How a handler answers: :meth:`json` once, or :meth:`open_stream` then :meth:`event` repeatedly."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False

    async def json(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self._start(status, {"content-type": "application/json", **(headers or {})})
        await self._body(body, more=False)

    async def open_stream(self, headers: dict[str, str] | None = None) -> None:
        await self._start(
            200,
            {"content-type": "text/event-stream; charset=utf-8", **SSE_HEADERS, **(headers or {})},
        )

    async def event(self, data: bytes, name: str | None = None) -> None:
        head = b"event: " + name.encode() + b"\n" if name else b""
        await self._body(head + b"data: " + data + b"\n\n", more=True)

    async def close_stream(self, done_marker: bool = True) -> None:
        await self._body(b"data: [DONE]\n\n" if done_marker else b"", more=False)

    async def _start(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await self._safe({"type": "http.response.start", "status": status, "headers": raw})

    async def _body(self, body: bytes, *, more: bool) -> None:
        await self._safe({"type": "http.response.body", "body": body, "more_body": more})
        if not more:
            self.finished = True

    async def _safe(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError as e:  # ASGI 2.4: the server tells us the client is gone by failing the send
            raise ClientGone() from e


Handler = Callable[[Channel], Awaitable[None]]


class Exchange:
    """ASGI app for one generation request: run ``handler``, cancel it if the client disconnects."""

    def __init__(self, handler: Handler, log_level: int = logging.INFO) -> None:
        self.handler = handler
        self.log_level = log_level
        self.disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = Channel(send)
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        if not channel.finished:
                            self.disconnected = True
                            log.log(self.log_level, "client disconnected", path=scope.get("path"))
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                await self.handler(channel)
            except ClientGone:
                self.disconnected = True
            finally:
                tg.cancel_scope.cancel()
