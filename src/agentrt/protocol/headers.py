"""The HTTP headers that carry an agent program's identity from the SDK to the server.

Every LLM call the SDK sends inside a program carries:

- ``x-agentrt-program``: the program id (also sent as ``x-session-id``, the
  session header vLLM and SGLang already understand);
- ``x-agentrt-thread``: the program thread the call was made from (a thread or
  task of the program; unique within the program);
- ``x-agentrt-parent-call``: the call this one follows in its thread (absent on
  the first call of the main thread): together these describe the program's DAG;
- ``x-agentrt-call``: the call id chosen by the client; the server adopts it;
- ``x-agentrt-program-name``: the program's name, percent-encoded, when it has one;
- ``x-agentrt-interrupt``: seconds the thread spent in ``@agentrt.tool``
  functions since its previous LLM call (the program's interrupt time).

Requests that are not LLM calls (a tool server, ``/models``) carry the same
headers without ``x-agentrt-call`` and ``x-agentrt-interrupt``. The server and
the SDK both read and write them through this module only.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

import msgspec

PROGRAM = "x-agentrt-program"
THREAD = "x-agentrt-thread"
PARENT_CALL = "x-agentrt-parent-call"
CALL = "x-agentrt-call"
PROGRAM_NAME = "x-agentrt-program-name"
INTERRUPT = "x-agentrt-interrupt"
SESSION = "x-session-id"

ALL_HEADERS: frozenset[str] = frozenset(
    {PROGRAM, THREAD, PARENT_CALL, CALL, PROGRAM_NAME, INTERRUPT, SESSION}
)

# Paths (relative to the API base URL) whose requests are LLM calls: each gets a call id.
LLM_CALL_PATHS: frozenset[str] = frozenset({"/chat/completions", "/completions", "/responses"})

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
# Ids are opaque tokens: letters, digits and a few separators, so that foreign
# clients (a vLLM-style session id, a trace id) are accepted as they are.
_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_ID_LENGTH}}}")


class HeaderError(ValueError):
    """A program header is present but malformed (the server answers 400)."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(f"invalid {header} header: {message}")
        self.header = header


class CallHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """The program identity one request carries, as parsed from its headers."""

    program_id: str
    thread_id: str = ""
    parent_call_id: str | None = None
    call_id: str | None = None
    program_name: str | None = None
    interrupt_seconds: float = 0.0


def is_llm_call_path(path: str) -> bool:
    """True when ``path`` is an LLM call: ``/chat/completions``, or a URL path ending in one."""
    if path in LLM_CALL_PATHS:  # the openai client's relative paths: the common case
        return True
    path = path.rstrip("/")
    return any(path.endswith(p) for p in LLM_CALL_PATHS)


def format_headers(
    *,
    program_id: str,
    thread_id: str,
    parent_call_id: str | None = None,
    call_id: str | None = None,
    program_name: str | None = None,
    interrupt_seconds: float = 0.0,
) -> dict[str, str]:
    """The headers for one request (lower-case names; absent values are left out)."""
    headers = {PROGRAM: program_id, SESSION: program_id, THREAD: thread_id}
    if parent_call_id is not None:
        headers[PARENT_CALL] = parent_call_id
    if call_id is not None:
        headers[CALL] = call_id
    if program_name:
        headers[PROGRAM_NAME] = _quoted_name(program_name)
    if interrupt_seconds > 0.0:
        headers[INTERRUPT] = format_seconds(interrupt_seconds)
    return headers


def program_headers(program_id: str, program_name: str | None = None) -> dict[str, str]:
    """The headers that name a program, the same on each of its requests (a client keeps them
    per program and passes them to :func:`call_headers`)."""
    headers = {PROGRAM: program_id, SESSION: program_id}
    if program_name:
        headers[PROGRAM_NAME] = _quoted_name(program_name)
    return headers


def call_headers(
    program: dict[str, str],
    thread_id: str,
    parent_call_id: str | None,
    call_id: str,
    interrupt_seconds: float,
) -> dict[str, str]:
    """The headers of one LLM call: ``program`` (from :func:`program_headers`, left as it is)
    and the call's own. The same as :func:`format_headers` with a call id, built for the
    client's per-call path: positional arguments, the program's part copied, not rebuilt."""
    headers = program.copy()
    headers[THREAD] = thread_id
    if parent_call_id is not None:
        headers[PARENT_CALL] = parent_call_id
    headers[CALL] = call_id
    if interrupt_seconds > 0.0:
        headers[INTERRUPT] = format_seconds(interrupt_seconds)
    return headers


def format_seconds(seconds: float) -> str:
    """``seconds`` (>= 0) with six decimals, like ``f"{seconds:.6f}"`` (the nearest microsecond).

    Built from the whole number of microseconds with integer formatting: it is in
    the header of nearly every call, and float formatting is the slowest part of
    that header to produce.
    """
    if not seconds < 1e15:  # inf, or beyond what a double holds to the microsecond
        return f"{seconds:.6f}"
    digits = str(int(seconds * 1e6 + 0.5)).rjust(7, "0")
    return digits[:-6] + "." + digits[-6:]


@functools.lru_cache(maxsize=1024)
def _quoted_name(name: str) -> str:
    # Names repeat on every call of a program: quote each once.
    return quote(name, safe="")


def parse_headers(headers: Mapping[str, str]) -> CallHeaders | None:
    """Read the program identity from request headers.

    ``headers`` may be any mapping (names are matched case-insensitively).
    Returns None when the request carries no program (neither ``x-agentrt-program``
    nor ``x-session-id``); a bare ``x-session-id`` (a plain vLLM/SGLang-style
    client) is taken as the program id. Raises :class:`HeaderError` when a
    header is present but malformed.
    """
    ours = {k.lower(): v for k, v in headers.items() if k.lower() in ALL_HEADERS}
    return _parse(ours)


def parse_asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> CallHeaders | None:
    """:func:`parse_headers` over an ASGI scope's ``headers`` list (latin-1 bytes pairs)."""
    ours: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in ALL_HEADERS:
            ours[key] = value.decode("latin-1")
    return _parse(ours)


def _parse(h: dict[str, str]) -> CallHeaders | None:
    program_id = h.get(PROGRAM) or h.get(SESSION)
    if program_id is None:
        return None
    header = PROGRAM if PROGRAM in h else SESSION
    program_id = _checked_id(header, program_id)
    thread_id = h.get(THREAD, "")
    if thread_id:
        thread_id = _checked_id(THREAD, thread_id)
    parent = h.get(PARENT_CALL)
    call = h.get(CALL)
    return CallHeaders(
        program_id=program_id,
        thread_id=thread_id,
        parent_call_id=_checked_id(PARENT_CALL, parent) if parent else None,
        call_id=_checked_id(CALL, call) if call else None,
        program_name=_parse_name(h.get(PROGRAM_NAME)),
        interrupt_seconds=_parse_interrupt(h.get(INTERRUPT)),
    )


def _checked_id(header: str, value: str) -> str:
    value = value.strip()
    if not _ID.fullmatch(value):
        raise HeaderError(
            header,
            f"expected 1 to {MAX_ID_LENGTH} characters of letters, digits and ._:- (got {value[:40]!r})",
        )
    return value


def _parse_name(value: str | None) -> str | None:
    if not value:
        return None
    try:
        name = unquote(value.strip(), errors="strict")
    except UnicodeDecodeError:
        raise HeaderError(PROGRAM_NAME, "not percent-encoded UTF-8") from None
    if len(name) > MAX_NAME_LENGTH:
        raise HeaderError(PROGRAM_NAME, f"longer than {MAX_NAME_LENGTH} characters")
    return name or None


def _parse_interrupt(value: str | None) -> float:
    if value is None or not value.strip():
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise HeaderError(INTERRUPT, f"expected seconds as a number (got {value[:40]!r})") from None
    if not math.isfinite(seconds) or seconds < 0.0:
        raise HeaderError(
            INTERRUPT, f"expected a finite number of seconds >= 0 (got {value[:40]!r})"
        )
    return seconds
