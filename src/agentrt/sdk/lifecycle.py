"""Telling servers when a program starts and ends (``POST``/``DELETE {base_url}/programs``).

A ``@program`` does not know which clients it will use, so the first LLM call
of a program through an agentrt client announces the program to that client's
server (once per program per base URL), and the end of the outermost program
ends it on every server that saw it. Servers without the endpoints (404/405
on the announcement) are remembered for the life of the process and never
asked again; servers whose endpoints time out are left alone for
``TIMEOUT_PAUSE_SECONDS``, so that every program does not wait on them twice.
Nothing here raises into user code: failures are logged, and a server ends
idle programs by itself anyway.

Tool signals: when a program thread enters its outermost ``@agentrt.tool``
and when it leaves it, every server the program was announced to hears it
(``POST {base_url}/programs/{id}/tool``), so that a server can hold the
program's KV while the tool runs and bring it back as the tool ends. The
signal is sent inline (one small request each way, before the tool starts and
after it ends), which keeps it ordered with the program's calls; a sync tool
does not signal servers it reaches through an async client. Servers without
the route are never asked again; ``AGENTRT_TOOL_SIGNALS=0`` turns the signals off.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Literal

import msgspec

from agentrt.log import get_logger
from agentrt.protocol.headers import MAX_NAME_LENGTH
from agentrt.protocol.programs import ProgramStart, ToolEvent
from agentrt.sdk.context import ProgramRecord
from agentrt.sdk.servers import Outcome, ProgramServer, ServerEntry


def _log() -> Any:
    # Looked up per event (these are rare), so the current logging configuration applies.
    return get_logger("agentrt.sdk.lifecycle")


# How long the program endpoints of a server that timed out are not asked again.
TIMEOUT_PAUSE_SECONDS = 60.0

_unsupported_lock = threading.Lock()
_unsupported_servers: set[str] = set()
_paused_until: dict[str, float] = {}  # server -> time.monotonic() when it is asked again
_no_tool_route: set[str] = set()  # servers that answered 404/405 to a tool signal
TOOL_SIGNALS_ENV = "AGENTRT_TOOL_SIGNALS"


def server_supports_programs(key: str) -> bool:
    """False for a server without the endpoints, or one whose endpoints recently timed out."""
    if key in _unsupported_servers:
        return False
    until = _paused_until.get(key)
    return until is None or time.monotonic() >= until


def _pause(key: str, detail: str) -> None:
    with _unsupported_lock:
        _paused_until[key] = time.monotonic() + TIMEOUT_PAUSE_SECONDS
    _log().warning(
        "program endpoints timed out; not asking this server for a while",
        server=key,
        seconds=TIMEOUT_PAUSE_SECONDS,
        detail=detail,
    )


def forget_unsupported_servers() -> None:
    """Ask every server again (e.g. after a server was upgraded in place or came back)."""
    with _unsupported_lock:
        _unsupported_servers.clear()
        _paused_until.clear()
        _no_tool_route.clear()


def claim_announcement(record: ProgramRecord, key: str, client: ProgramServer) -> bool:
    """True for exactly one caller per program and server: that caller sends the POST."""
    if key in record.servers or not record.owns_lifecycle or record.ended:
        return False
    if not server_supports_programs(key):
        return False
    with record.lock:
        if key in record.servers or record.ended:
            return False
        record.servers[key] = ServerEntry(key, client)
    return True


def start_body(record: ProgramRecord) -> dict[str, object]:
    """The JSON body of the announcement."""
    start = ProgramStart(
        program_id=record.program_id,
        name=record.name,
        tenant=record.tenant,
        started_at=record.started_at,
        metadata=record.metadata,
    )
    body: dict[str, object] = msgspec.to_builtins(start)
    return body


def note_announcement(record: ProgramRecord, key: str, outcome: Outcome, detail: str) -> None:
    """Record how the announcement went (and remember servers without the endpoints)."""
    entry = record.servers.get(key)
    if entry is not None:
        entry.outcome = outcome
    if outcome is Outcome.UNSUPPORTED:
        with _unsupported_lock:
            _unsupported_servers.add(key)
        _log().info(
            "server has no program endpoints; not asking it again", server=key, detail=detail
        )
    elif outcome is Outcome.TIMED_OUT:
        _pause(key, detail)
    elif outcome is Outcome.FAILED:
        _log().warning(
            "could not announce program", program_id=record.program_id, server=key, detail=detail
        )


def _servers_to_end(record: ProgramRecord) -> list[ServerEntry]:
    with record.lock:
        if record.ended:
            return []
        record.ended = True
        entries = list(record.servers.values())
    # A failed announcement may still have left the program on the server (its calls
    # create it), so it is ended too; servers without the endpoints are not.
    to_end = []
    for e in entries:
        if e.outcome is Outcome.UNSUPPORTED or not server_supports_programs(e.key):
            continue
        if e.client.is_closed():
            # Closed by its user (``with OpenAI() as client:`` inside the program): it can
            # send nothing more, and the server ends the program once it has been idle.
            _log().debug(
                "client closed; the server ends the program when idle",
                program_id=record.program_id,
                server=e.key,
            )
            continue
        to_end.append(e)
    return to_end


def _note_end(record: ProgramRecord, entry: ServerEntry, outcome: Outcome, detail: str) -> None:
    if outcome is Outcome.TIMED_OUT:
        _pause(entry.key, detail)
    elif outcome is Outcome.FAILED:
        _log().warning(
            "could not end program", program_id=record.program_id, server=entry.key, detail=detail
        )
    else:
        _log().debug(
            "program ended", program_id=record.program_id, server=entry.key, outcome=outcome.value
        )


def end_program_sync(record: ProgramRecord) -> None:
    """End ``record`` on every server that saw it (blocking, bounded by each client's timeout)."""
    for entry in _servers_to_end(record):
        try:
            outcome, detail = entry.client.end_program_sync(record.program_id)
        except Exception as exc:  # a client must never break the user's program
            outcome, detail = Outcome.FAILED, repr(exc)
        _note_end(record, entry, outcome, detail)


async def end_program_async(record: ProgramRecord) -> None:
    """End ``record`` on every server that saw it (awaits; the caller shields it from cancellation)."""
    for entry in _servers_to_end(record):
        try:
            outcome, detail = await entry.client.end_program_async(record.program_id)
        except Exception as exc:
            outcome, detail = Outcome.FAILED, repr(exc)
        _note_end(record, entry, outcome, detail)


# ------------------------------------------------------------------ tool signals


def tool_signals_enabled() -> bool:
    return os.environ.get(TOOL_SIGNALS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def _tool_targets(record: ProgramRecord) -> list[ServerEntry]:
    """The servers that took the program's announcement and may take tool signals."""
    if record.ended or not record.servers or not tool_signals_enabled():
        return []
    return [
        e
        for e in list(record.servers.values())
        if e.outcome is Outcome.OK
        and e.key not in _no_tool_route
        and server_supports_programs(e.key)
        and not e.client.is_closed()
    ]


def tool_body(
    state: Literal["start", "end"], tool: str | None, thread_id: str
) -> dict[str, object]:
    body: dict[str, object] = msgspec.to_builtins(
        ToolEvent(state=state, tool=tool[:MAX_NAME_LENGTH] if tool else None, thread_id=thread_id)
    )
    return body


def _note_tool(entry: ServerEntry, outcome: Outcome, detail: str) -> None:
    if outcome is Outcome.UNSUPPORTED:
        with _unsupported_lock:
            _no_tool_route.add(entry.key)
        _log().info("server takes no tool signals; not sending it more", server=entry.key)
    elif outcome is Outcome.TIMED_OUT:
        _pause(entry.key, detail)
    elif outcome is Outcome.FAILED:
        _log().debug("tool signal failed", server=entry.key, detail=detail)


def tool_signal_sync(record: ProgramRecord, body: dict[str, object]) -> None:
    """Tell the program's servers that a thread entered or left a tool (sync code)."""
    for entry in _tool_targets(record):
        try:
            result = entry.client.tool_event_sync(record.program_id, body)
        except Exception as exc:  # a client must never break the user's tool
            result = Outcome.FAILED, repr(exc)
        if result is not None:
            _note_tool(entry, *result)


async def tool_signal_async(record: ProgramRecord, body: dict[str, object]) -> None:
    """Tell the program's servers that a thread entered or left a tool (async code)."""
    for entry in _tool_targets(record):
        try:
            outcome, detail = await entry.client.tool_event_async(record.program_id, body)
        except Exception as exc:
            outcome, detail = Outcome.FAILED, repr(exc)
        _note_tool(entry, outcome, detail)
