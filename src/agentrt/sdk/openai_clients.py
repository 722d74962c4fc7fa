"""``agentrt.OpenAI`` and ``agentrt.AsyncOpenAI``, and the same behaviour for any openai client.

They override one method of the openai client, ``request``, through which
every API call passes once (retries included, streaming included): inside a
program, the request gets the program headers of the thread or task that
makes it, computed at that moment (an LLM call also gets its call id, kept
across retries), and the program is announced to the client's server before
its first call there. The call's end (its response read, a stream consumed
or closed) is noted, so the next call of the thread reports the time between
them as its interrupt. Outside a program ``request`` is the original one, so
the clients behave exactly like ``openai.OpenAI`` / ``openai.AsyncOpenAI``.

:func:`install` puts the same ``request`` on ``openai.OpenAI`` and
``openai.AsyncOpenAI`` themselves (``agentrt.instrument()``), so clients that
a framework builds carry programs too; :func:`instrument_openai_client`
switches one existing client over by giving it the matching subclass.

``app=`` (an ASGI app, e.g. agentrt's own server app) makes the client talk to
that app in-process through ``agentrt.serving.inprocess``'s streaming transports.
"""

from __future__ import annotations

import asyncio
import os
import threading
import types
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

import openai
import pydantic
from openai._compat import model_copy
from openai._models import FinalRequestOptions
from openai._types import NotGiven, RequestOptions

from agentrt.protocol.headers import CALL, LLM_CALL_PATHS, PROGRAM, is_llm_call_path
from agentrt.sdk import lifecycle
from agentrt.sdk.context import ProgramRecord, begin_call, peek, propagation_headers
from agentrt.sdk.servers import Outcome, server_key

_NONE = type(None)
# Seconds allowed for each program announcement or end (never retried), unless the client
# has a ``lifecycle_timeout`` of its own.
LIFECYCLE_TIMEOUT = 5.0
# Where an in-process client "is": never resolved, only used to build request URLs.
IN_PROCESS_BASE_URL = "http://agentrt.in-process/v1"
_PROGRAMS = "/programs"


def _with_program_headers(
    options: FinalRequestOptions,
) -> tuple[FinalRequestOptions, ProgramRecord | None, str]:
    """A copy of ``options`` with the calling code's program headers (explicit headers win),
    and for an LLM call its program and call id.

    A request that already names its program (an agentrt client sent it through
    an instrumented parent class, or the caller set the header) is left alone.
    """
    path = options.url
    record: ProgramRecord | None = None
    call_id = ""
    if path.startswith(_PROGRAMS):
        return options, None, call_id
    given = options.headers
    if not isinstance(given, NotGiven) and PROGRAM in given:
        return options, None, call_id
    if path in LLM_CALL_PATHS or is_llm_call_path(path):
        started = begin_call()
        if started is None:
            return options, None, call_id
        record, headers = started
    else:
        headers = propagation_headers()
        if not headers:
            return options, None, call_id
    if not isinstance(given, NotGiven):
        headers.update(given)  # type: ignore[arg-type]  # Omit values pass through
    if record is not None:
        call_id = headers[CALL]  # the caller's, should it have set one
    return with_headers(options, headers), record, call_id


_PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2
if _PYDANTIC_V2:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    # The setters of BaseModel's own slots, called directly: ``object.__setattr__`` would
    # look each one up by name on every call.
    _slots = vars(BaseModel)
    _set_dict = _slots["__dict__"].__set__
    _set_fields_set = _slots["__pydantic_fields_set__"].__set__
    _set_extra = _slots["__pydantic_extra__"].__set__
    _set_private = _slots["__pydantic_private__"].__set__
_new = object.__new__


def with_headers(options: FinalRequestOptions, headers: dict[str, str]) -> FinalRequestOptions:
    """A shallow copy of ``options`` whose headers are ``headers``; ``options`` is left as it was.

    On pydantic 2 this does what ``BaseModel.__copy__`` and an attribute
    assignment do, without their generic steps: it runs on every call.
    """
    if not _PYDANTIC_V2:
        options = model_copy(options)
        options.headers = headers
        return options
    clone = _new(type(options))
    fields = options.__dict__.copy()
    fields["headers"] = headers
    _set_dict(clone, fields)
    _set_fields_set(clone, options.__pydantic_fields_set__ | _HEADERS)
    extra = options.__pydantic_extra__
    _set_extra(clone, None if extra is None else extra.copy())
    private = getattr(options, "__pydantic_private__", None)
    if private is not None:
        private = {k: v for k, v in private.items() if v is not PydanticUndefined}
    _set_private(clone, private)
    return clone


_HEADERS = frozenset({"headers"})


def _outcome_of(exc: Exception, announcing: bool) -> tuple[Outcome, str]:
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code in (404, 405) and announcing:
            return Outcome.UNSUPPORTED, f"HTTP {code}"
        if code == 404:
            return Outcome.NOT_FOUND, "HTTP 404"
        if code == 405:
            return Outcome.UNSUPPORTED, "HTTP 405"
        return Outcome.FAILED, f"HTTP {code}: {exc.message[:200]}"
    if isinstance(exc, openai.APITimeoutError):
        return Outcome.TIMED_OUT, repr(exc)[:300]
    return Outcome.FAILED, repr(exc)[:300]


def _in_process_kwargs(app: Any, kwargs: dict[str, Any], *, is_async: bool) -> None:
    if kwargs.get("http_client") is not None:
        raise TypeError("pass either app= or http_client=, not both")
    from agentrt.serving import inprocess

    transport = inprocess.AsyncASGITransport(app) if is_async else inprocess.SyncASGITransport(app)
    httpx_module: Any
    try:
        import httpx2

        base = httpx2.AsyncBaseTransport if is_async else httpx2.BaseTransport
        httpx_module = httpx2 if isinstance(transport, base) else None
    except ImportError:
        httpx_module = None
    if httpx_module is None:
        import httpx

        httpx_module = httpx
    client_cls = httpx_module.AsyncClient if is_async else httpx_module.Client
    kwargs["http_client"] = client_cls(transport=transport)
    if kwargs.get("base_url") is None:
        kwargs["base_url"] = IN_PROCESS_BASE_URL
    if kwargs.get("api_key") is None and not os.environ.get("OPENAI_API_KEY"):
        kwargs["api_key"] = "agentrt-in-process"


# -------------------------------------------------------------------------- the request hooks


def _track_stream_end(result: Any, record: ProgramRecord, call_id: str) -> Any:
    """Make the stream ``result`` note its call's end when it is consumed or closed."""
    iterator = getattr(result, "_iterator", None)
    if iterator is None:
        record.call_ended(call_id)
    elif isinstance(result, openai.Stream):
        result._iterator = _sync_stream_end(iterator, record, call_id)
    else:
        result._iterator = _async_stream_end(iterator, record, call_id)
    return result


_STREAMS = (openai.Stream, openai.AsyncStream)


def _server_key(client: Any) -> str:
    """The server key of ``client``'s base URL (kept on the client while the URL is the same)."""
    url = client._base_url
    cached = client.__dict__.get("_agentrt_server_key")
    if cached is not None and cached[0] is url:
        key: str = cached[1]
        return key
    key = server_key(str(url))
    client.__dict__["_agentrt_server_key"] = (url, key)
    return key


def _sync_stream_end(iterator: Any, record: ProgramRecord, call_id: str) -> Any:
    try:
        yield from iterator
    finally:
        record.call_ended(call_id)


async def _async_stream_end(iterator: Any, record: ProgramRecord, call_id: str) -> Any:
    try:
        async for item in iterator:
            yield item
    finally:
        record.call_ended(call_id)


def sync_request(
    client: openai.OpenAI,
    send: Any,
    cast_to: Any,
    options: FinalRequestOptions,
    stream: bool,
    stream_cls: Any,
) -> Any:
    """``request`` of a sync client inside a program: headers, announcement, end of call."""
    options, record, call_id = _with_program_headers(options)
    if record is None:
        return send(cast_to, options, stream=stream, stream_cls=stream_cls)
    key = _server_key(client)
    if key not in record.servers and lifecycle.claim_announcement(record, key, SyncServer(client)):
        SyncServer(client).announce(record, key)
    try:
        result = send(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException:
        record.call_ended(call_id)
        raise
    if isinstance(result, _STREAMS):
        return _track_stream_end(result, record, call_id)
    record.call_ended(call_id)
    return result


async def async_request(
    client: openai.AsyncOpenAI,
    send: Any,
    cast_to: Any,
    options: FinalRequestOptions,
    stream: bool,
    stream_cls: Any,
) -> Any:
    """``request`` of an async client inside a program: headers, announcement, end of call."""
    options, record, call_id = _with_program_headers(options)
    if record is None:
        return await send(cast_to, options, stream=stream, stream_cls=stream_cls)
    key = _server_key(client)
    if key not in record.servers and lifecycle.claim_announcement(record, key, AsyncServer(client)):
        await AsyncServer(client).announce(record, key)
    try:
        result = await send(cast_to, options, stream=stream, stream_cls=stream_cls)
    except BaseException:
        record.call_ended(call_id)
        raise
    if isinstance(result, _STREAMS):
        return _track_stream_end(result, record, call_id)
    record.call_ended(call_id)
    return result


# -------------------------------------------------------------------------- lifecycle through a client


def _tool_path(program_id: str) -> str:
    return f"{_PROGRAMS}/{quote(program_id, safe='')}/tool"


def _lifecycle_options(client: Any) -> RequestOptions:
    return {"timeout": getattr(client, "lifecycle_timeout", LIFECYCLE_TIMEOUT), "max_retries": 0}


class SyncServer:
    """The server of a sync openai client, as the program lifecycle reaches it."""

    __slots__ = ("client",)

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client

    def is_closed(self) -> bool:
        return self.client.is_closed()

    def announce(self, record: ProgramRecord, key: str) -> None:
        try:
            self.client.post(
                _PROGRAMS,
                body=lifecycle.start_body(record),
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
            outcome, detail = Outcome.OK, ""
        except Exception as exc:  # never break the user's call over an announcement
            outcome, detail = _outcome_of(exc, announcing=True)
        lifecycle.note_announcement(record, key, outcome, detail)

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        try:
            self.client.delete(
                f"{_PROGRAMS}/{quote(program_id, safe='')}",
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=False)
        return Outcome.OK, ""

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        import anyio

        return await anyio.to_thread.run_sync(self.end_program_sync, program_id)

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        try:
            self.client.post(
                _tool_path(program_id),
                body=body,
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=True)
        return Outcome.OK, ""

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        import anyio

        result = await anyio.to_thread.run_sync(self.tool_event_sync, program_id, body)
        assert result is not None
        return result


class AsyncServer:
    """The server of an async openai client, as the program lifecycle reaches it."""

    __slots__ = ("client",)

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    def is_closed(self) -> bool:
        return self.client.is_closed()

    async def announce(self, record: ProgramRecord, key: str) -> None:
        try:
            await self.client.post(
                _PROGRAMS,
                body=lifecycle.start_body(record),
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
            outcome, detail = Outcome.OK, ""
        except Exception as exc:
            outcome, detail = _outcome_of(exc, announcing=True)
        lifecycle.note_announcement(record, key, outcome, detail)

    async def end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        try:
            await self.client.delete(
                f"{_PROGRAMS}/{quote(program_id, safe='')}",
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=False)
        return Outcome.OK, ""

    async def tool_event_async(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str]:
        try:
            await self.client.post(
                _tool_path(program_id),
                body=body,
                cast_to=_NONE,
                options=_lifecycle_options(self.client),
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=True)
        return Outcome.OK, ""

    def tool_event_sync(
        self, program_id: str, body: dict[str, object]
    ) -> tuple[Outcome, str] | None:
        return None  # sync code would block on a private event loop: the server learns from gaps

    def end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        # A sync program used this async client (it ran its own event loop inside the
        # program). That loop may be gone, so the DELETE runs on a private loop in a
        # helper thread, never on a loop this thread may be running.
        result: list[tuple[Outcome, str]] = []

        def run() -> None:
            coro: Coroutine[Any, Any, tuple[Outcome, str]] = self.end_program_async(program_id)
            result.append(asyncio.run(coro))

        worker = threading.Thread(target=run, name="agentrt-end-program", daemon=True)
        worker.start()
        timeout = getattr(self.client, "lifecycle_timeout", LIFECYCLE_TIMEOUT)
        worker.join(timeout + 1.0)
        return result[0] if result else (Outcome.TIMED_OUT, "timed out ending the program")


# -------------------------------------------------------------------------- the client classes


def _program_subclass(base: type[Any]) -> type[Any]:
    """The subclass of openai client class ``base`` whose ``request`` carries the program.

    It adds nothing to the instance layout, so an existing client's class can be
    switched to it (:func:`instrument_openai_client`).
    """
    if issubclass(base, openai.AsyncOpenAI):

        class AsyncProgramClient(base):  # type: ignore[misc]
            _agentrt_program_client = True
            # Seconds allowed for each program announcement or end (never retried).
            lifecycle_timeout: float = LIFECYCLE_TIMEOUT

            async def request(
                self,
                cast_to: Any,
                options: FinalRequestOptions,
                *,
                stream: bool = False,
                stream_cls: Any = None,
            ) -> Any:
                send = super().request
                if peek() is None:
                    return await send(cast_to, options, stream=stream, stream_cls=stream_cls)
                return await async_request(self, send, cast_to, options, stream, stream_cls)

        sub: type[Any] = AsyncProgramClient
    else:

        class ProgramClient(base):  # type: ignore[misc]
            _agentrt_program_client = True
            lifecycle_timeout: float = LIFECYCLE_TIMEOUT

            def request(
                self,
                cast_to: Any,
                options: FinalRequestOptions,
                *,
                stream: bool = False,
                stream_cls: Any = None,
            ) -> Any:
                send = super().request
                if peek() is None:
                    return send(cast_to, options, stream=stream, stream_cls=stream_cls)
                return sync_request(self, send, cast_to, options, stream, stream_cls)

        sub = ProgramClient
    sub.__name__, sub.__qualname__ = base.__name__, base.__qualname__
    sub.__module__ = base.__module__
    return sub


class OpenAI(_program_subclass(openai.OpenAI)):  # type: ignore[misc]
    """``openai.OpenAI`` whose requests carry the current agent program's headers."""

    __module__ = "agentrt.sdk.openai_clients"

    def __init__(self, *, app: Any = None, **kwargs: Any) -> None:
        if app is not None:
            _in_process_kwargs(app, kwargs, is_async=False)
        super().__init__(**kwargs)


class AsyncOpenAI(_program_subclass(openai.AsyncOpenAI)):  # type: ignore[misc]
    """``openai.AsyncOpenAI`` whose requests carry the current agent program's headers."""

    __module__ = "agentrt.sdk.openai_clients"

    def __init__(self, *, app: Any = None, **kwargs: Any) -> None:
        if app is not None:
            _in_process_kwargs(app, kwargs, is_async=True)
        super().__init__(**kwargs)


_subclasses: dict[type[Any], type[Any]] = {openai.OpenAI: OpenAI, openai.AsyncOpenAI: AsyncOpenAI}
_subclasses_lock = threading.Lock()


def _program_class(cls: type[Any]) -> type[Any]:
    """The class an instance of openai client class ``cls`` is switched to."""
    if getattr(cls, "_agentrt_program_client", False):
        return cls
    with _subclasses_lock:
        sub = _subclasses.get(cls)
        if sub is None:
            sub = _subclasses[cls] = _program_subclass(cls)
        return sub


def instrument_openai_client(client: openai.OpenAI | openai.AsyncOpenAI) -> None:
    """Make one existing openai client (and its ``with_options`` copies) carry programs."""
    client.__class__ = _program_class(type(client))


# -------------------------------------------------------------------------- global instrumentation

# The ``request`` each patched class had before (None: the one it inherits).
_own: dict[type[Any], Any] = {}
# What the patched ``request`` hands over to: the class's original one.
_bind = types.MethodType
_sync_send: Any = openai.OpenAI.request
_async_send: Any = openai.AsyncOpenAI.request


def _patched_sync_request(
    self: openai.OpenAI,
    cast_to: Any,
    options: FinalRequestOptions,
    *,
    stream: bool = False,
    stream_cls: Any = None,
) -> Any:
    if peek() is None:
        return _sync_send(self, cast_to, options, stream=stream, stream_cls=stream_cls)
    send = _bind(_sync_send, self)
    return sync_request(self, send, cast_to, options, stream, stream_cls)


async def _patched_async_request(
    self: openai.AsyncOpenAI,
    cast_to: Any,
    options: FinalRequestOptions,
    *,
    stream: bool = False,
    stream_cls: Any = None,
) -> Any:
    if peek() is None:
        return await _async_send(self, cast_to, options, stream=stream, stream_cls=stream_cls)
    send = _bind(_async_send, self)
    return await async_request(self, send, cast_to, options, stream, stream_cls)


_PATCHES: dict[type[Any], Any] = {
    openai.OpenAI: _patched_sync_request,
    openai.AsyncOpenAI: _patched_async_request,
}


_install_lock = threading.Lock()


def install() -> None:
    """Give ``openai.OpenAI`` and ``openai.AsyncOpenAI`` (and so every subclass) the hook."""
    global _sync_send, _async_send
    with _install_lock:
        for cls, patch in _PATCHES.items():
            if cls.__dict__.get("request") is patch:
                continue
            _own[cls] = cls.__dict__.get("request")
            original = cls.request
            if cls is openai.OpenAI:
                _sync_send = original
            else:
                _async_send = original
            cls.request = patch


def uninstall() -> None:
    """Put the openai client classes back as they were."""
    with _install_lock:
        for cls, patch in _PATCHES.items():
            if cls.__dict__.get("request") is not patch:
                continue
            own = _own.pop(cls, None)
            if own is None:
                del cls.request
            else:
                cls.request = own


def is_installed() -> bool:
    return all(cls.__dict__.get("request") is patch for cls, patch in _PATCHES.items())
