"""Wire format of the program lifecycle endpoints.

``POST {base_url}/programs`` with a :class:`ProgramStart` body announces a
program before its first LLM call on that server; ``DELETE
{base_url}/programs/{program_id}`` ends it. Both answer a :class:`ProgramInfo`.
``POST {base_url}/programs/{program_id}/tool`` with a :class:`ToolEvent` body
says that a thread of the program entered or left a tool (the server answers
204 and may hold the program's KV meanwhile).
A server also creates a program on the first call that carries its headers
and ends programs idle past a TTL, so the endpoints add metadata and prompt
clean-up; they are never required for correctness.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agentrt.protocol.headers import MAX_ID_LENGTH, MAX_NAME_LENGTH

# Bounds on what a client may store with a program: a server keeps up to its
# ``max_programs`` of them, so each must stay small.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MetadataKey = Annotated[str, msgspec.Meta(max_length=MAX_METADATA_KEY)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=MAX_METADATA_VALUE)]

ProgramState = Literal["running", "ended", "expired"]


class ProgramStart(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Body of ``POST /programs``: a program the client is about to run."""

    program_id: str
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] | None = None
    tenant: str | None = None
    # Unix time (seconds) when the program started on the client.
    started_at: float | None = None
    # Free-form labels (e.g. the workload name); never used for scheduling.
    metadata: Annotated[
        dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=MAX_METADATA_ENTRIES)
    ] = msgspec.field(default_factory=dict)


class ToolEvent(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Body of ``POST /programs/{id}/tool``: a thread of the program entered or left a tool."""

    state: Literal["start", "end"]
    tool: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] | None = None
    thread_id: Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)] = ""


class ProgramCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One LLM call of a program, as ``GET /programs/{id}`` reports it (recent and live calls)."""

    id: str
    thread_id: str = ""
    state: str = "live"  # live | finished | aborted
    service: float = 0.0
    wait_seconds: float = 0.0
    interrupt_seconds: float = 0.0


class ProgramInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the server knows about a program (answer of POST, DELETE and GET)."""

    id: str
    object: Literal["program"] = "program"
    name: str | None = None
    state: ProgramState = "running"
    created: float | None = None  # unix time the server first saw the program
    num_calls: int = 0
    live_calls: int = 0
    # Attained service (the ATLAS value), in the server's service unit.
    service: float = 0.0
    wait_seconds: float = 0.0
    interrupt_seconds: float = 0.0
    metadata: dict[str, str] = msgspec.field(default_factory=dict)  # the labels it was started with
    # Filled in by GET /programs/{id} only: its recent and live calls, oldest first.
    calls: list[ProgramCall] = msgspec.field(default_factory=list)


program_start_decoder = msgspec.json.Decoder(ProgramStart)
program_info_decoder = msgspec.json.Decoder(ProgramInfo)
tool_event_decoder = msgspec.json.Decoder(ToolEvent)
