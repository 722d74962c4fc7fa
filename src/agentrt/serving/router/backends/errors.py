"""Carry :class:`EngineError` across a process, actor or HTTP boundary and back.

A worker process, a Ray actor and a remote server all report a failed call as
plain fields (status, type, message, code, param, Retry-After). The router
turns them back into the ``EngineError`` subclass the app maps onto the
OpenAI error schema, so a 400 from a replica is the same 400 to the client.
"""

from __future__ import annotations

import msgspec

from agentrt.protocol.engine import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    InvalidRequest,
    PromptTooLong,
)


class EngineLost(EngineUnavailable):
    """The engine itself is gone (its process exited, its server refuses connections, its actor
    died), not merely unwilling to take one call: the router takes it down at once rather than
    routing more calls to it until the next health check. Still a 503 to the client."""


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An :class:`EngineError` as data."""

    status: int
    message: str
    type: str = "internal_error"
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe ``exc`` as data; anything that is not an ``EngineError`` becomes a 500."""
    if isinstance(exc, EngineError):
        return ErrorInfo(
            status=exc.status,
            message=str(exc),
            type=exc.type,
            code=exc.code,
            param=exc.param,
            retry_after=exc.retry_after if isinstance(exc, EngineOverloaded) else None,
        )
    return ErrorInfo(status=500, message=f"{type(exc).__name__}: {exc}")


def engine_error(info: ErrorInfo) -> EngineError:
    """Rebuild the most specific ``EngineError`` for ``info``, keeping its status, type and code."""
    exc: EngineError
    if info.code == PromptTooLong.code:
        exc = PromptTooLong(info.message, param=info.param)
    elif info.status == EngineOverloaded.status:
        exc = EngineOverloaded(info.message, param=info.param)
        if info.retry_after is not None:
            exc.retry_after = info.retry_after
    elif info.status == EngineUnavailable.status:
        exc = EngineUnavailable(info.message, param=info.param)
    elif info.status == InvalidRequest.status:
        exc = InvalidRequest(info.message, param=info.param)
    else:
        exc = EngineError(info.message, param=info.param)
    # Keep what the far side said where it is more precise than the class default.
    exc.status = info.status
    if info.type:
        exc.type = info.type
    if info.code is not None:
        exc.code = info.code
    return exc
