"""``agentrt.OpenAI`` and ``agentrt.AsyncOpenAI``: the official clients, plus the program headers.

They override one method of the openai client, ``request``, through which
every API call passes once (retries included, streaming included): inside a
program, the request gets the program headers of the thread or task that
makes it, computed at that moment (an LLM call also gets its call id, kept
across retries), and the program is announced to the client's server before
its first call there. Outside a program ``request`` is the original one, so
the clients behave exactly like ``openai.OpenAI`` / ``openai.AsyncOpenAI``.

``app=`` (an ASGI app, e.g. agentrt's own server app) makes the client talk to
that app in-process through ``agentrt.serving.inprocess``'s streaming transports.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, Literal, overload
from urllib.parse import quote

import openai
from openai._base_client import _AsyncStreamT, _StreamT
from openai._compat import model_copy
from openai._models import FinalRequestOptions
from openai._types import NotGiven, ResponseT

from agentrt.protocol.headers import is_llm_call_path
from agentrt.sdk import lifecycle
from agentrt.sdk.context import ProgramRecord, begin_call, peek, propagation_headers
from agentrt.sdk.lifecycle import Outcome

_NONE = type(None)
# Where an in-process client "is": never resolved, only used to build request URLs.
IN_PROCESS_BASE_URL = "http://agentrt.in-process/v1"
_PROGRAMS = "/programs"


def _with_program_headers(
    options: FinalRequestOptions,
) -> tuple[FinalRequestOptions, ProgramRecord | None]:
    """A copy of ``options`` with the calling code's program headers (explicit headers win)."""
    path = options.url
    record: ProgramRecord | None = None
    if path.startswith(_PROGRAMS):
        return options, None
    if is_llm_call_path(path):
        started = begin_call()
        if started is None:
            return options, None
        record, headers = started
    else:
        headers = propagation_headers()
        if not headers:
            return options, None
    if not isinstance(options.headers, NotGiven):
        headers.update(options.headers)  # type: ignore[arg-type]  # Omit values pass through
    options = model_copy(options)
    options.headers = headers
    return options, record


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


class OpenAI(openai.OpenAI):
    """``openai.OpenAI`` whose requests carry the current agent program's headers."""

    # Seconds allowed for each program announcement or end (never retried).
    lifecycle_timeout: float = 5.0

    def __init__(self, *, app: Any = None, **kwargs: Any) -> None:
        if app is not None:
            _in_process_kwargs(app, kwargs, is_async=False)
        super().__init__(**kwargs)

    @overload
    def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: Literal[True],
        stream_cls: type[_StreamT],
    ) -> _StreamT: ...
    @overload
    def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: Literal[False] = False,
    ) -> ResponseT: ...
    @overload
    def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: bool = False,
        stream_cls: type[_StreamT] | None = None,
    ) -> ResponseT | _StreamT: ...
    def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: bool = False,
        stream_cls: type[_StreamT] | None = None,
    ) -> ResponseT | _StreamT:
        if peek() is not None:
            options, record = _with_program_headers(options)
            if record is not None:
                key = str(self.base_url)
                if lifecycle.claim_announcement(record, key, self):
                    self._agentrt_announce(record, key)
        return super().request(cast_to, options, stream=stream, stream_cls=stream_cls)

    def _agentrt_announce(self, record: ProgramRecord, key: str) -> None:
        try:
            self.post(
                _PROGRAMS,
                body=lifecycle.start_body(record),
                cast_to=_NONE,
                options={"timeout": self.lifecycle_timeout, "max_retries": 0},
            )
            outcome, detail = Outcome.OK, ""
        except Exception as exc:  # never break the user's call over an announcement
            outcome, detail = _outcome_of(exc, announcing=True)
        lifecycle.note_announcement(record, key, outcome, detail)

    def _agentrt_end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        try:
            self.delete(
                f"{_PROGRAMS}/{quote(program_id, safe='')}",
                cast_to=_NONE,
                options={"timeout": self.lifecycle_timeout, "max_retries": 0},
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=False)
        return Outcome.OK, ""

    async def _agentrt_end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        import anyio

        return await anyio.to_thread.run_sync(self._agentrt_end_program_sync, program_id)


class AsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose requests carry the current agent program's headers."""

    lifecycle_timeout: float = 5.0

    def __init__(self, *, app: Any = None, **kwargs: Any) -> None:
        if app is not None:
            _in_process_kwargs(app, kwargs, is_async=True)
        super().__init__(**kwargs)

    @overload
    async def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: Literal[False] = False,
    ) -> ResponseT: ...
    @overload
    async def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: Literal[True],
        stream_cls: type[_AsyncStreamT],
    ) -> _AsyncStreamT: ...
    @overload
    async def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: bool,
        stream_cls: type[_AsyncStreamT] | None = None,
    ) -> ResponseT | _AsyncStreamT: ...
    async def request(
        self,
        cast_to: type[ResponseT],
        options: FinalRequestOptions,
        *,
        stream: bool = False,
        stream_cls: type[_AsyncStreamT] | None = None,
    ) -> ResponseT | _AsyncStreamT:
        if peek() is not None:
            options, record = _with_program_headers(options)
            if record is not None:
                key = str(self.base_url)
                if lifecycle.claim_announcement(record, key, self):
                    await self._agentrt_announce(record, key)
        return await super().request(cast_to, options, stream=stream, stream_cls=stream_cls)

    async def _agentrt_announce(self, record: ProgramRecord, key: str) -> None:
        try:
            await self.post(
                _PROGRAMS,
                body=lifecycle.start_body(record),
                cast_to=_NONE,
                options={"timeout": self.lifecycle_timeout, "max_retries": 0},
            )
            outcome, detail = Outcome.OK, ""
        except Exception as exc:
            outcome, detail = _outcome_of(exc, announcing=True)
        lifecycle.note_announcement(record, key, outcome, detail)

    async def _agentrt_end_program_async(self, program_id: str) -> tuple[Outcome, str]:
        try:
            await self.delete(
                f"{_PROGRAMS}/{quote(program_id, safe='')}",
                cast_to=_NONE,
                options={"timeout": self.lifecycle_timeout, "max_retries": 0},
            )
        except Exception as exc:
            return _outcome_of(exc, announcing=False)
        return Outcome.OK, ""

    def _agentrt_end_program_sync(self, program_id: str) -> tuple[Outcome, str]:
        # A sync program used this async client (it ran its own event loop inside the
        # program). That loop may be gone, so the DELETE runs on a private loop in a
        # helper thread, never on a loop this thread may be running.
        result: list[tuple[Outcome, str]] = []

        def run() -> None:
            coro: Coroutine[Any, Any, tuple[Outcome, str]] = self._agentrt_end_program_async(
                program_id
            )
            result.append(asyncio.run(coro))

        worker = threading.Thread(target=run, name="agentrt-end-program", daemon=True)
        worker.start()
        worker.join(self.lifecycle_timeout + 1.0)
        return result[0] if result else (Outcome.TIMED_OUT, "timed out ending the program")
