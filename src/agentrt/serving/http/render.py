"""What a renderer turns engine events into an OpenAI answer with, and what it must offer.

A renderer (:mod:`.chat`, :mod:`.completions`, :mod:`.responses`) is pure: it reads the events
of a request's engine calls and the calls' trackers, and returns response
bodies and chunks. It does no I/O and calls nothing back; taking a slot,
running the calls, sending and reporting errors is :mod:`.generation`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from agentrt.protocol.engine import TokenEvent
from agentrt.protocol.openai import PromptTokensDetails, UsageInfo
from agentrt.serving.http.calls import CallTracker
from agentrt.serving.http.errors import APIError

T = TypeVar("T")


@dataclass(kw_only=True)
class Reply:
    """The answer to one request as a renderer sees it: its ids and the trackers of its calls."""

    response_id: str
    model: str  # as the client named it
    trackers: list[CallTracker]
    program_id: str | None  # as the client knows it (not tenant-scoped)
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> UsageInfo:
        """The tokens of all the request's calls."""
        usages = [t.usage for t in self.trackers if t.usage is not None]
        prompt = sum(u.prompt_tokens for u in usages)
        completion = sum(u.completion_tokens for u in usages)
        return UsageInfo(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=sum(u.cached_tokens for u in usages)
            ),
        )

    def whole(self, make: Callable[..., T], choices: list[Any]) -> T:
        """The whole response (``ChatCompletion``, ``Completion``) with ``choices``."""
        return make(
            id=self.response_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=self.usage(),
            agentrt=self.trackers[0].info(self.program_id),
        )

    def chunk(self, make: Callable[..., T], choices: list[Any]) -> T:
        """One SSE chunk; its ``usage`` is null when the stream ends with a usage chunk."""
        usage: dict[str, Any] = {"usage": None} if self.include_usage else {}
        return make(
            id=self.response_id, created=self.created, model=self.model, choices=choices, **usage
        )

    def usage_chunk(self, make: Callable[..., T]) -> T:
        """The stream's last chunk when it asked for the usage: no choices, the usage and timings."""
        return self.whole(make, [])


@dataclass(frozen=True)
class SSEFormat:
    """How a stream frames its events."""

    named_events: bool  # an ``event:`` line before each event's data, naming its ``type``
    done_marker: bool  # ``data: [DONE]`` ends the stream


CHUNKS = SSEFormat(named_events=False, done_marker=True)  # chat and completions
EVENTS = SSEFormat(named_events=True, done_marker=False)  # the Responses API


class Renderer(Protocol):
    """Engine events of call ``call`` (the index of its tracker) in, OpenAI bodies and chunks out.

    Renderers subclass it for its defaults: chat-style chunks ended by ``[DONE]``, and the
    error body as the event that reports an error once the stream is open.
    """

    reply: Reply
    sse: SSEFormat = CHUNKS

    def add(self, call: int, event: TokenEvent) -> None:
        """Keep an event for the whole body (a request that does not stream)."""

    def body(self) -> msgspec.Struct:
        """The whole response, once every call has ended."""

    def chunks(self, call: int, event: TokenEvent) -> list[msgspec.Struct]:
        """The SSE chunks one event of a streamed request becomes (maybe none)."""

    def closing(self) -> list[msgspec.Struct]:
        """The chunks of a stream after its calls' last events (chat-style: the usage chunk,
        when the request asked for it)."""

    def stream_error(self, error: APIError) -> msgspec.Struct:
        """What an error becomes once the stream is open: the error body as one event."""
        return error.body()
