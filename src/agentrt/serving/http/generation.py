"""One generation request from its server slot to its last byte, with one error path.

:class:`Generation` takes the request's slot in the tenant's limiter, opens
its calls' records in the program directory, runs the engine calls (side by
side when there are several), feeds their events to the endpoint's renderer
and sends what it returns: one JSON body, or an SSE stream opened at the
first event. Whatever goes wrong after intake is answered in one place: as
a JSON error while nothing has been sent, as an SSE error event (then
``[DONE]``) once the stream is open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineError, TokenEvent
from agentrt.protocol.openai import encoder
from agentrt.scheduling import CallOutcome
from agentrt.serving.http.calls import CallTracker, run_call
from agentrt.serving.http.errors import APIError, as_api_error, error_headers, internal_error
from agentrt.serving.http.exchange import Channel, ClientGone
from agentrt.serving.http.render import Renderer
from agentrt.serving.http.state import ServerState

log = get_logger("agentrt.serving")


@dataclass(kw_only=True)
class Generation:
    """A request's engine calls, run in a server slot and answered through ``renderer``."""

    state: ServerState
    renderer: Renderer
    tenant: str
    stream: bool
    interrupt: float = 0.0  # seconds the program spent in tools since its previous call
    # Called once every call has ended normally, before the whole body or the stream's
    # closing chunks are rendered.
    on_done: Callable[[], None] | None = None

    @property
    def trackers(self) -> list[CallTracker]:
        return self.renderer.reply.trackers

    async def __call__(self, channel: Channel) -> None:
        programs = self.state.programs
        try:
            async with self.state.limiter.slot(self.tenant, len(self.trackers)):
                for t in self.trackers:
                    programs.call_started(t.request, self.interrupt)
                try:
                    await (self._stream(channel) if self.stream else self._whole(channel))
                finally:
                    # Calls the request did not see finish (an error, a disconnect) end here.
                    for t in self.trackers:
                        programs.call_ended(t.request, t.timings, CallOutcome.ABORTED)
        except ClientGone:
            raise
        except Exception as e:
            if channel.finished:
                raise
            await self._fail(channel, e)

    async def _whole(self, channel: Channel) -> None:
        renderer = self.renderer

        async def run(call: int, tracker: CallTracker) -> None:
            async def keep(event: TokenEvent) -> None:
                renderer.add(call, event)

            await self._call(tracker, keep)

        await self._each(run)
        self._done()
        body = encoder.encode(renderer.body())
        await channel.json(200, body, self._headers(self.trackers[0]))

    async def _stream(self, channel: Channel) -> None:
        renderer = self.renderer
        headers = self._headers(None)
        # Calls of one request send side by side: each event's chunks go out together.
        lock: contextlib.AbstractAsyncContextManager[Any] = (
            anyio.Lock() if len(self.trackers) > 1 else contextlib.nullcontext()
        )

        async def run(call: int, tracker: CallTracker) -> None:
            async def send(event: TokenEvent) -> None:
                chunks = renderer.chunks(call, event)
                async with lock:
                    if not channel.started:
                        await channel.open_stream(headers)
                    for chunk in chunks:
                        await self._send(channel, chunk)

            await self._call(tracker, send)

        await self._each(run)
        self._done()
        if not channel.started:
            await channel.open_stream(headers)
        for chunk in renderer.closing():
            await self._send(channel, chunk)
        await channel.close_stream(renderer.sse.done_marker)

    async def _send(self, channel: Channel, chunk: msgspec.Struct) -> None:
        name = getattr(chunk, "type", None) if self.renderer.sse.named_events else None
        await channel.event(encoder.encode(chunk), name)

    def _done(self) -> None:
        if self.on_done is not None:
            self.on_done()

    async def _call(
        self, tracker: CallTracker, on_event: Callable[[TokenEvent], Coroutine[Any, Any, None]]
    ) -> None:
        await run_call(self.state.engine, tracker, on_event)
        outcome = CallOutcome.FINISHED if tracker.finish_reason else CallOutcome.ABORTED
        self.state.programs.call_ended(tracker.request, tracker.timings, outcome)

    async def _each(self, run: Callable[[int, CallTracker], Coroutine[Any, Any, None]]) -> None:
        """Run one coroutine per call of the request side by side; the first error cancels the rest."""
        if len(self.trackers) == 1:
            await run(0, self.trackers[0])
            return
        try:
            async with anyio.create_task_group() as tg:
                for call, tracker in enumerate(self.trackers):
                    tg.start_soon(run, call, tracker)
        except BaseExceptionGroup as group:
            # Surface one error as the request's error (all calls were aborted by their own cleanup).
            raise _first_leaf(group) from None

    async def _fail(self, channel: Channel, exc: Exception) -> None:
        """Answer ``exc``: a JSON error before anything was sent, an SSE error event after."""
        if isinstance(exc, APIError | EngineError):
            error = as_api_error(exc)
        else:
            log.exception(
                "generation failed",
                response_id=self.renderer.reply.response_id,
                streaming=channel.started,
            )
            error = internal_error()
        if channel.started:
            await self._send(channel, self.renderer.stream_error(error))
            await channel.close_stream(self.renderer.sse.done_marker)
        else:
            body = encoder.encode(error.body())
            await channel.json(error.status, body, {**error_headers(error), **self._headers(None)})

    def _headers(self, tracker: CallTracker | None) -> dict[str, str]:
        out = {"x-agentrt-call-id": self.trackers[0].client_call_id}
        if tracker is not None:
            out["server-timing"] = tracker.server_timing()
        return out


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
