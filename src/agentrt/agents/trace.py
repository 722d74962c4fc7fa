"""What a program did, as the client saw it: its LLM calls and its tool calls, with timestamps.

The benchmark hands each program a :class:`Trace` and reads it afterwards to
compute per-program latency, wait share and per-call TTFT/ITL. Running an
agent on its own also fills one, so its summary can be printed. Timestamps are
``time.monotonic()`` seconds. Appends come from several threads or tasks of
one program; ``list.append`` is atomic, so no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec


class CallRecord(msgspec.Struct, kw_only=True):
    """One LLM call: when it was sent, its first and last token, and its token counts."""

    start: float
    first_token: float | None = None
    end: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Gaps between successive streamed chunks that carried text (seconds).
    inter_token: list[float] = msgspec.field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    # Where the call sits in its program's DAG, as the SDK saw it when the call was made.
    thread_id: str | None = None
    parent_call_id: str | None = None
    # What an agentrt server reports about the call in its last chunk (None from other servers).
    call_id: str | None = None
    server_queue_time: float | None = None
    server_model_time: float | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


class ToolRecord(msgspec.Struct, kw_only=True):
    """One tool execution (an interruption of the program, not model time)."""

    name: str
    start: float
    end: float


class Trace(msgspec.Struct, kw_only=True):
    """Everything one program run recorded; the benchmark's raw material."""

    calls: list[CallRecord] = msgspec.field(default_factory=list)
    tools: list[ToolRecord] = msgspec.field(default_factory=list)

    @contextmanager
    def tool(self, name: str) -> Iterator[None]:
        """Record the wall time of the tool execution inside the ``with`` block."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.tools.append(ToolRecord(name=name, start=start, end=time.monotonic()))

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)
