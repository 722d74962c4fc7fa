"""Run engine calls for one HTTP request: consume token events, track timings, abort on exit.

:func:`run_call` is the only place the app iterates ``EngineClient.generate``:
whatever ends the request early (client disconnect, cancellation, an error
while sending) closes the engine's iterator and aborts the call, shielded
from the cancellation, so its KV blocks are freed at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from agentrt.protocol.engine import (
    EngineClient,
    EngineError,
    GenerationRequest,
    Timings,
    TokenEvent,
    Usage,
)
from agentrt.protocol.openai import AgentrtInfo
from agentrt.serving.http.metrics import ServerMetrics


class CallTracker:
    """Server-side timings of one call (monotonic seconds), observed into the metrics as it runs."""

    def __init__(
        self, request: GenerationRequest, metrics: ServerMetrics, client_call_id: str | None = None
    ) -> None:
        self.request = request
        self.client_call_id = (
            client_call_id or request.call_id
        )  # the id the client knows (not tenant-scoped)
        self.metrics = metrics
        self.arrival = request.arrival_time or time.monotonic()
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.finished: float | None = None
        self.usage: Usage | None = None
        self.timings: Timings | None = None
        self.finish_reason: str | None = None
        self.first_event_seen = False

    def saw(self, event: TokenEvent) -> None:
        self.first_event_seen = True
        now = time.monotonic()
        if event.token_ids or event.text:
            if self.first_token is None:
                self.first_token = now
                self.metrics.ttft.observe(now - self.arrival)
            elif self.last_token is not None:
                self.metrics.itl.observe(now - self.last_token)
            self.last_token = now
        if event.usage is not None:
            self.usage = event.usage
        if event.timings is not None:  # the engine's last event: the call is over on its side
            self.timings = event.timings
            self.finished = now
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason

    def done(self, complete: bool) -> None:
        """The call ended: a complete one is observed as a request; an aborted one counts its tokens only."""
        self.finished = time.monotonic()
        if complete:
            self.metrics.e2e.observe(self.finished - self.arrival)
            self.metrics.observe_call(self.usage, self.timings, self.finish_reason)
        elif self.usage is not None or self.first_token is not None:
            self.metrics.observe_call(self.usage, self.timings, "abort")

    def info(self, program_id: str | None) -> AgentrtInfo:
        t = self.timings
        return AgentrtInfo(
            call_id=self.client_call_id,
            program_id=program_id,
            queue_time=t.queue_time if t else 0.0,
            time_to_first_token=None
            if self.first_token is None
            else self.first_token - self.arrival,
            e2e_latency=None if self.finished is None else self.finished - self.arrival,
            model_time=t.model_time if t else 0.0,
            preemptions=t.preemptions if t else 0,
        )

    def server_timing(self) -> str:
        """A ``Server-Timing`` header value (milliseconds), for clients that read headers."""
        info = self.info(None)
        parts = [f"queue;dur={info.queue_time * 1e3:.3f}", f"model;dur={info.model_time * 1e3:.3f}"]
        if info.time_to_first_token is not None:
            parts.append(f"ttft;dur={info.time_to_first_token * 1e3:.3f}")
        if info.e2e_latency is not None:
            parts.append(f"e2e;dur={info.e2e_latency * 1e3:.3f}")
        return ", ".join(parts)


async def run_call(
    engine: EngineClient,
    tracker: CallTracker,
    on_event: Callable[[TokenEvent], Awaitable[None]],
) -> None:
    """Feed every event of the call to ``on_event``; abort the call if anything ends it early.

    Engine errors (:class:`EngineError`) propagate to the caller, which maps
    them onto the OpenAI error schema.
    """
    events = engine.generate(tracker.request)
    complete = False
    admitted = True
    try:
        async for event in events:
            tracker.saw(event)
            await on_event(event)
        complete = True
    except EngineError:
        # Refused before its first event (bad request, overload): the engine holds nothing to abort,
        # and the id may be in use by another call (a duplicate x-agentrt-call).
        admitted = tracker.first_event_seen
        raise
    finally:
        with anyio.CancelScope(shield=True):
            if not complete:
                await events.aclose()  # type: ignore[attr-defined]
                if admitted:
                    await engine.abort(tracker.request.call_id)
            tracker.done(complete)
