"""Program headers on any httpx client: a request event hook and a transport wrapper.

Both decide per request, in the thread or task that sends it: a request to an
LLM-call path (``.../chat/completions``, ``.../completions``, ``.../responses``)
is an LLM call of the program and gets a fresh call id; any other request (a
tool server, say) carries the program, thread and parent call only. Headers
the request already has are left alone, and a request that already names
its program gets none. Outside a program nothing is added.
They work with ``httpx`` and with ``httpx2`` (the openai package's fork): both
only need ``request.url.path`` and ``request.headers``.

    client = httpx.Client(event_hooks={"request": [agentrt.add_program_headers]})
    aclient = httpx.AsyncClient(event_hooks={"request": [agentrt.add_program_headers_async]})
    client = httpx.Client(transport=agentrt.ProgramHeadersTransport(httpx.HTTPTransport()))
"""

from __future__ import annotations

from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, Protocol

from agentrt.protocol.headers import PROGRAM, is_llm_call_path
from agentrt.sdk.context import begin_call, peek, propagation_headers


class _URL(Protocol):
    @property
    def path(self) -> str: ...


class HTTPRequest(Protocol):
    """What the hook needs from an ``httpx.Request`` (or ``httpx2.Request``)."""

    @property
    def url(self) -> _URL: ...

    @property
    def headers(self) -> MutableMapping[str, str]: ...


def headers_for_path(path: str) -> dict[str, str]:
    """The program headers for a request to ``path`` (an LLM call gets a call id)."""
    if is_llm_call_path(path):
        started = begin_call()
        return started[1] if started is not None else {}
    return propagation_headers()


def add_program_headers(request: HTTPRequest) -> None:
    """httpx ``request`` event hook (sync clients): add the current program's headers."""
    headers = request.headers
    # A request that already names its program (an agentrt client sent it, or the caller set
    # it) is left alone: a second call id here would chain the program's calls through a
    # call the server never sees.
    if peek() is None or PROGRAM in headers:
        return
    for name, value in headers_for_path(request.url.path).items():
        if name not in headers:
            headers[name] = value


async def add_program_headers_async(request: HTTPRequest) -> None:
    """httpx ``request`` event hook for ``AsyncClient`` (httpx awaits async hooks there)."""
    add_program_headers(request)


class ProgramHeadersTransport:
    """Wraps a sync httpx transport (``httpx.HTTPTransport()``, a mock, an ASGI transport)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def handle_request(self, request: Any) -> Any:
        add_program_headers(request)
        return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ProgramHeadersTransport:
        self.transport.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        self.transport.__exit__(exc_type, exc, tb)


class AsyncProgramHeadersTransport:
    """Wraps an async httpx transport (``httpx.AsyncHTTPTransport()``, ``httpx.ASGITransport``...)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    async def handle_async_request(self, request: Any) -> Any:
        add_program_headers(request)
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncProgramHeadersTransport:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        await self.transport.__aexit__(exc_type, exc, tb)
