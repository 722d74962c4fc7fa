"""What the chat and completions handlers share: ids, the calls' trackers, program bookkeeping, errors."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineClient, EngineError
from agentrt.protocol.openai import PromptTokensDetails, UsageInfo, encoder
from agentrt.scheduling import CallOutcome
from agentrt.serving.http.calls import CallTracker
from agentrt.serving.http.errors import APIError, from_engine_error, internal_error
from agentrt.serving.http.exchange import Channel, ClientGone
from agentrt.serving.http.programs import ProgramDirectory

log = get_logger("agentrt.serving")


def usage_info(trackers: list[CallTracker]) -> UsageInfo:
    prompt = sum(t.usage.prompt_tokens for t in trackers if t.usage is not None)
    completion = sum(t.usage.completion_tokens for t in trackers if t.usage is not None)
    cached = sum(t.usage.cached_tokens for t in trackers if t.usage is not None)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


@dataclass(kw_only=True)
class Generation:
    """One HTTP generation request: its engine calls and how to answer it."""

    engine: EngineClient
    trackers: list[CallTracker]
    programs: ProgramDirectory
    response_id: str
    model: str
    program_id: str | None  # as the client knows it (not tenant-scoped)
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def headers(self, tracker: CallTracker | None) -> dict[str, str]:
        out = {"x-agentrt-call-id": self.trackers[0].client_call_id}
        if tracker is not None:
            out["server-timing"] = tracker.server_timing()
        return out

    def finished(self, tracker: CallTracker) -> None:
        self.programs.call_ended(
            tracker.request,
            tracker.timings,
            CallOutcome.FINISHED if tracker.finish_reason else CallOutcome.ABORTED,
        )

    def abandoned(self) -> None:
        """The request ended without finishing some calls (error or disconnect): close their records."""
        for t in self.trackers:
            self.programs.call_ended(t.request, t.timings, CallOutcome.ABORTED)

    async def stream_errors(self, channel: Channel, work: Awaitable[None]) -> None:
        """Run ``work``; an error after the SSE stream opened is sent as an SSE error event, then ``[DONE]``.

        Before the stream opened, errors propagate, to be answered as a JSON error with their status.
        """
        try:
            await work
        except ClientGone:
            raise
        except (EngineError, APIError) as e:
            if not channel.started:
                raise
            await _sse_error(channel, from_engine_error(e) if isinstance(e, EngineError) else e)
        except Exception:
            if not channel.started:
                raise
            log.exception("generation failed mid-stream", response_id=self.response_id)
            await _sse_error(channel, internal_error())


async def _sse_error(channel: Channel, error: APIError) -> None:
    await channel.event(encoder.encode(error.body()))
    await channel.close_stream()
