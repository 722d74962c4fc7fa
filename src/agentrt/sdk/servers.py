"""The servers a program was announced to: how each answered, and how its end reaches it.

Shared by :mod:`agentrt.sdk.context` (a program's record holds its servers)
and :mod:`agentrt.sdk.lifecycle` (which announces and ends programs), so
neither imports the other.
"""

from __future__ import annotations

import enum
from typing import Protocol


class Outcome(enum.Enum):
    """How a server answered a lifecycle request."""

    OK = "ok"
    UNSUPPORTED = "unsupported"  # 404/405 on the announcement: no /programs endpoints
    NOT_FOUND = "not_found"  # 404 when ending: the server had already forgotten the program
    TIMED_OUT = "timed_out"  # no answer within the client's lifecycle_timeout
    FAILED = "failed"  # network error, 5xx, ...


class ProgramServer(Protocol):
    """How a program's end and its tool signals reach one server (through the client, hook
    or transport that carried its calls there)."""

    def is_closed(self) -> bool: ...

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]: ...

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]: ...

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        """``POST /programs/{id}/tool`` from sync code; None (nothing sent) when the server is
        reached through an async client, which sync code cannot use without blocking."""
        ...

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        """``POST /programs/{id}/tool`` from async code."""
        ...


def server_key(base_url: str) -> str:
    """The key a server is known by: its API base URL, without a trailing slash."""
    return base_url.rstrip("/")


class ServerEntry:
    """One server a program was announced to, and the client that reaches it."""

    __slots__ = ("client", "key", "outcome")

    def __init__(self, key: str, client: ProgramServer) -> None:
        self.key = key
        self.client = client
        self.outcome: Outcome | None = None  # None while the announcement is in flight
