"""Program headers on any httpx client: event hooks, a transport wrapper, one hooked client.

Each decides per request, in the thread or task that sends it: a request to an
LLM-call path (``.../chat/completions``, ``.../completions``, ``.../responses``)
is an LLM call of the program and gets a fresh call id; any other request (a
tool server, say) carries the program, thread and parent call only. Headers
the request already has are left alone, and a request that already names
its program gets none. Outside a program nothing is added.
They work with ``httpx`` and with ``httpx2`` (the openai package's fork).

    client = httpx.Client(event_hooks={"request": [agentrt.add_program_headers]})
    aclient = httpx.AsyncClient(event_hooks={"request": [agentrt.add_program_headers_async]})
    client = httpx.Client(transport=agentrt.ProgramHeadersTransport(httpx.HTTPTransport()))
    client = agentrt.instrument_client(httpx.Client())

Before a program's first LLM call to a server, the program is announced
there (``POST {base}/programs``, the base being the URL up to the LLM-call
path), and when the program ends, it is ended there: through the hooked
client or the wrapped transport, or, for a bare event hook, which knows no
client, through a short-lived client of its own. The transports and a hooked
client also note the end of each LLM call (its response body read or closed),
from which the next call's interrupt is measured; a bare request hook sees no
response, so there only ``@agentrt.tool`` time is reported.
"""

from __future__ import annotations

import abc
import importlib
import inspect
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

from agentrt.protocol.headers import CALL, LLM_CALL_PATHS, PROGRAM, is_llm_call_path
from agentrt.sdk import lifecycle
from agentrt.sdk.context import (
    ProgramRecord,
    begin_call,
    install,
    peek,
    propagation_headers,
    restore,
)
from agentrt.sdk.servers import Outcome, server_key

_EXTENSION = "agentrt.call"  # request.extensions key: (record, call id) of an LLM call
_LIFECYCLE_TIMEOUT = 5.0
# "/chat/completions" before "/completions", which it ends with.
_LONGEST_FIRST = sorted(LLM_CALL_PATHS, key=len, reverse=True)


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


def _base_url(request: Any) -> str:
    """The API base URL of an LLM-call request: its URL up to the LLM-call path."""
    url = request.url
    path = url.path.rstrip("/")
    prefix = next((path[: -len(p)] for p in _LONGEST_FIRST if path.endswith(p)), path)
    return f"{url.scheme}://{url.netloc.decode('ascii')}{prefix}"


def _http_module(obj: Any) -> Any:
    """``httpx`` or ``httpx2``: the library ``obj`` (a request, client, transport) belongs to."""
    return importlib.import_module(type(obj).__module__.split(".")[0])


def _start(request: HTTPRequest) -> tuple[ProgramRecord, str] | None:
    """Add the program headers to ``request``; for an LLM call, its program and call id."""
    headers = request.headers
    # A request that already names its program (an agentrt client sent it, or the caller set
    # it) is left alone: a second call id here would chain the program's calls through a
    # call the server never sees.
    if peek() is None or PROGRAM in headers:
        return None
    if not is_llm_call_path(request.url.path):
        for name, value in propagation_headers().items():
            if name not in headers:
                headers[name] = value
        return None
    started = begin_call()
    if started is None:
        return None
    record, program_headers = started
    for name, value in program_headers.items():
        if name not in headers:
            headers[name] = value
    call_id = program_headers[CALL]
    extensions = getattr(request, "extensions", None)
    if isinstance(extensions, dict):
        extensions[_EXTENSION] = (record, call_id)
    return record, call_id


def _claim(
    record: ProgramRecord, request: Any, make_server: Callable[[str], Any]
) -> tuple[str, Any] | None:
    """``(key, server)`` when this request must announce ``record`` to its server first."""
    base = _base_url(request)
    key = server_key(base)
    if key in record.servers:
        return None
    server = make_server(base)
    if not lifecycle.claim_announcement(record, key, server):
        return None
    return key, server


def add_program_headers(request: HTTPRequest) -> None:
    """httpx ``request`` event hook (sync clients): add the current program's headers.

    It announces a program to each server before its first LLM call there, and
    ends it there when the program ends, through a short-lived client.
    """
    started = _start(request)
    if started is not None:
        claim = _claim(started[0], request, _fresh_client_server(request))
        if claim is not None:
            claim[1].announce_sync(started[0], claim[0])


async def add_program_headers_async(request: HTTPRequest) -> None:
    """httpx ``request`` event hook for ``AsyncClient`` (httpx awaits async hooks there)."""
    started = _start(request)
    if started is not None:
        claim = _claim(started[0], request, _fresh_client_server(request))
        if claim is not None:
            await claim[1].announce_async(started[0], claim[0])


# -------------------------------------------------------------------------- the end of a call


def _note_end(response: Any, request: Any, *, is_async: bool) -> None:
    """Make ``response`` note its call's end when its body has been read or it is closed."""
    started = request.extensions.get(_EXTENSION)
    if started is None:
        return
    if response.is_stream_consumed:  # a body the transport had read already
        started[0].call_ended(started[1])
        return
    module = _http_module(response)
    wrap = _async_end_stream(module) if is_async else _sync_end_stream(module)
    response.stream = wrap(response.stream, *started)


_stream_classes: dict[tuple[Any, bool], type[Any]] = {}


def _sync_end_stream(module: Any) -> type[Any]:
    cls = _stream_classes.get((module, False))
    if cls is None:

        class EndingStream(module.SyncByteStream):  # type: ignore[misc]
            def __init__(self, stream: Any, record: ProgramRecord, call_id: str) -> None:
                self._stream, self._record, self._call_id = stream, record, call_id

            def __iter__(self) -> Any:
                yield from self._stream

            def close(self) -> None:
                try:
                    self._stream.close()
                finally:
                    self._record.call_ended(self._call_id)

        cls = _stream_classes[(module, False)] = EndingStream
    return cls


def _async_end_stream(module: Any) -> type[Any]:
    cls = _stream_classes.get((module, True))
    if cls is None:

        class EndingStream(module.AsyncByteStream):  # type: ignore[misc]
            def __init__(self, stream: Any, record: ProgramRecord, call_id: str) -> None:
                self._stream, self._record, self._call_id = stream, record, call_id

            async def __aiter__(self) -> Any:
                async for chunk in self._stream:
                    yield chunk

            async def aclose(self) -> None:
                try:
                    await self._stream.aclose()
                finally:
                    self._record.call_ended(self._call_id)

        cls = _stream_classes[(module, True)] = EndingStream
    return cls


def _note_failure(request: Any) -> None:
    started = request.extensions.get(_EXTENSION)
    if started is not None:
        started[0].call_ended(started[1])


# -------------------------------------------------------------------------- lifecycle requests


def _lifecycle_request(module: Any, method: str, base: str, body: Any = None) -> Any:
    if method == "POST":
        return module.Request("POST", f"{base}/programs", json=body)
    if method == "TOOL":  # body: (program id, tool event)
        program_id, event = body
        return module.Request(
            "POST", f"{base}/programs/{quote(program_id, safe='')}/tool", json=event
        )
    return module.Request("DELETE", f"{base}/programs/{quote(body, safe='')}")


def _outcome(status: int, announcing: bool) -> tuple[Outcome, str]:
    if status < 300:
        return Outcome.OK, ""
    if (status in (404, 405) and announcing) or status == 405:
        return Outcome.UNSUPPORTED, f"HTTP {status}"
    if status == 404:
        return Outcome.NOT_FOUND, "HTTP 404"
    return Outcome.FAILED, f"HTTP {status}"


def _failure(exc: Exception) -> tuple[Outcome, str]:
    if "Timeout" in type(exc).__name__:
        return Outcome.TIMED_OUT, repr(exc)[:300]
    return Outcome.FAILED, repr(exc)[:300]


class _HttpServer(abc.ABC):
    """A server reached by sending lifecycle requests through ``send`` (sync or async)."""

    def __init__(self, module: Any, base: str) -> None:
        self.module = module
        self.base = base

    @abc.abstractmethod
    def _send_sync(self, request: Any) -> int:
        """Send one request; its status code."""

    @abc.abstractmethod
    async def _send_async(self, request: Any) -> int:
        """Send one request; its status code."""

    def is_closed(self) -> bool:
        return False

    def _run_sync(self, method: str, body: Any) -> tuple[Outcome, str]:
        token = install(None)  # type: ignore[arg-type]  # lifecycle requests carry no program
        try:
            status = self._send_sync(_lifecycle_request(self.module, method, self.base, body))
        except Exception as exc:
            return _failure(exc)
        finally:
            restore(token, None)
        return _outcome(status, method != "DELETE")

    async def _run_async(self, method: str, body: Any) -> tuple[Outcome, str]:
        token = install(None)  # type: ignore[arg-type]
        try:
            status = await self._send_async(
                _lifecycle_request(self.module, method, self.base, body)
            )
        except Exception as exc:
            return _failure(exc)
        finally:
            restore(token, None)
        return _outcome(status, method != "DELETE")

    def announce_sync(self, record: ProgramRecord, key: str) -> None:
        outcome, detail = self._run_sync("POST", lifecycle.start_body(record))
        lifecycle.note_announcement(record, key, outcome, detail)

    async def announce_async(self, record: ProgramRecord, key: str) -> None:
        outcome, detail = await self._run_async("POST", lifecycle.start_body(record))
        lifecycle.note_announcement(record, key, outcome, detail)

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        return self._run_sync("DELETE", program_id)

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        return await self._run_async("DELETE", program_id)

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        return self._run_sync("TOOL", (program_id, body))

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        return await self._run_async("TOOL", (program_id, body))


def _fresh_client_server(request: Any) -> Callable[[str], _HttpServer]:
    return lambda base: _FreshClientServer(_http_module(request), base)


class _FreshClientServer(_HttpServer):
    """Reached through a short-lived client of its own (a bare event hook knows no client)."""

    def _send_sync(self, request: Any) -> int:
        with self.module.Client(timeout=_LIFECYCLE_TIMEOUT) as client:
            return int(client.send(request).status_code)

    async def _send_async(self, request: Any) -> int:
        async with self.module.AsyncClient(timeout=_LIFECYCLE_TIMEOUT) as client:
            return int((await client.send(request)).status_code)


class _ClientServer(_HttpServer):
    """Reached through the hooked client itself (its transport, auth and base settings)."""

    def __init__(self, client: Any, base: str) -> None:
        super().__init__(_http_module(client), base)
        self.client = client

    def is_closed(self) -> bool:
        return bool(self.client.is_closed)

    def _send_sync(self, request: Any) -> int:
        request.extensions["timeout"] = _timeout_extension()
        return int(self.client.send(request).status_code)

    async def _send_async(self, request: Any) -> int:
        request.extensions["timeout"] = _timeout_extension()
        return int((await self.client.send(request)).status_code)

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        if inspect.iscoroutinefunction(self.client.send):
            return _run_on_private_loop(self.end_program_async(program_id))
        return super().end_program_sync(program_id)

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        if inspect.iscoroutinefunction(self.client.send):
            return await super().end_program_async(program_id)
        import anyio

        return await anyio.to_thread.run_sync(super().end_program_sync, program_id)

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        if inspect.iscoroutinefunction(self.client.send):
            return None
        return super().tool_event_sync(program_id, body)

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        if inspect.iscoroutinefunction(self.client.send):
            return await super().tool_event_async(program_id, body)
        import anyio

        return await anyio.to_thread.run_sync(self._run_sync, "TOOL", (program_id, body))


class _TransportServer(_HttpServer):
    """Reached through the wrapped transport (sync or async)."""

    def __init__(self, transport: Any, module: Any, base: str) -> None:
        super().__init__(module, base)
        self.transport = transport

    def _send_sync(self, request: Any) -> int:
        request.extensions["timeout"] = _timeout_extension()
        response = self.transport.handle_request(request)
        response.close()
        return int(response.status_code)

    async def _send_async(self, request: Any) -> int:
        request.extensions["timeout"] = _timeout_extension()
        response = await self.transport.handle_async_request(request)
        await response.aclose()
        return int(response.status_code)

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        if hasattr(self.transport, "handle_async_request"):
            return _run_on_private_loop(self.end_program_async(program_id))
        return super().end_program_sync(program_id)

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        if hasattr(self.transport, "handle_async_request"):
            return await super().end_program_async(program_id)
        import anyio

        return await anyio.to_thread.run_sync(super().end_program_sync, program_id)

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        if hasattr(self.transport, "handle_async_request"):
            return None
        return super().tool_event_sync(program_id, body)

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        if hasattr(self.transport, "handle_async_request"):
            return await super().tool_event_async(program_id, body)
        import anyio

        return await anyio.to_thread.run_sync(self._run_sync, "TOOL", (program_id, body))


def _timeout_extension() -> dict[str, float]:
    t = _LIFECYCLE_TIMEOUT
    return {"connect": t, "read": t, "write": t, "pool": t}


def _run_on_private_loop(coro: Any) -> tuple[Outcome, str]:
    """Run ``coro`` on a fresh event loop in a helper thread (a sync program ending an
    async client's program: the loop that client ran on may be gone)."""
    import asyncio
    import threading

    result: list[tuple[Outcome, str]] = []
    worker = threading.Thread(
        target=lambda: result.append(asyncio.run(coro)), name="agentrt-end-program", daemon=True
    )
    worker.start()
    worker.join(_LIFECYCLE_TIMEOUT + 1.0)
    return result[0] if result else (Outcome.TIMED_OUT, "timed out ending the program")


# -------------------------------------------------------------------------- transports


class ProgramHeadersTransport:
    """Wraps a sync httpx transport (``httpx.HTTPTransport()``, a mock, an ASGI transport)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def handle_request(self, request: Any) -> Any:
        started = _start(request)
        if started is None:
            return self.transport.handle_request(request)
        claim = _claim(
            started[0],
            request,
            lambda base: _TransportServer(self.transport, _http_module(request), base),
        )
        if claim is not None:
            claim[1].announce_sync(started[0], claim[0])
        try:
            response = self.transport.handle_request(request)
        except BaseException:
            _note_failure(request)
            raise
        _note_end(response, request, is_async=False)
        return response

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
        started = _start(request)
        if started is None:
            return await self.transport.handle_async_request(request)
        claim = _claim(
            started[0],
            request,
            lambda base: _TransportServer(self.transport, _http_module(request), base),
        )
        if claim is not None:
            await claim[1].announce_async(started[0], claim[0])
        try:
            response = await self.transport.handle_async_request(request)
        except BaseException:
            _note_failure(request)
            raise
        _note_end(response, request, is_async=True)
        return response

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


# -------------------------------------------------------------------------- one hooked client


class _ClientHooks:
    """The event hooks :func:`hook_httpx_client` installs on one client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def server(self, base: str) -> _ClientServer:
        return _ClientServer(self.client, base)

    def request_sync(self, request: Any) -> None:
        started = _start(request)
        if started is not None:
            claim = _claim(started[0], request, self.server)
            if claim is not None:
                claim[1].announce_sync(started[0], claim[0])

    async def request_async(self, request: Any) -> None:
        started = _start(request)
        if started is not None:
            claim = _claim(started[0], request, self.server)
            if claim is not None:
                await claim[1].announce_async(started[0], claim[0])

    def response_sync(self, response: Any) -> None:
        _note_end(response, response.request, is_async=False)

    async def response_async(self, response: Any) -> None:
        _note_end(response, response.request, is_async=True)


def hook_httpx_client(client: Any) -> bool:
    """Install the program hooks on an httpx/httpx2 client; False if ``client`` is none."""
    hooks = getattr(client, "event_hooks", None)
    if not isinstance(hooks, dict) or not callable(getattr(client, "send", None)):
        return False
    if any(isinstance(getattr(h, "__self__", None), _ClientHooks) for h in hooks["request"]):
        return True
    ours = _ClientHooks(client)
    if inspect.iscoroutinefunction(client.send):
        hooks["request"] = [*hooks["request"], ours.request_async]
        hooks["response"] = [*hooks["response"], ours.response_async]
    else:
        hooks["request"] = [*hooks["request"], ours.request_sync]
        hooks["response"] = [*hooks["response"], ours.response_sync]
    client.event_hooks = hooks
    return True
