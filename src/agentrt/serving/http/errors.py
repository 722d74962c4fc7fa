"""Errors users can see, in the OpenAI error schema with the right status code.

Everything that goes wrong with one request becomes an :class:`APIError` (or
an :class:`~agentrt.protocol.engine.EngineError` from the engine, which maps
the same way) and is answered as ``{"error": {"message", "type", "param",
"code"}}``. The server never answers with a traceback and never hangs.
"""

from __future__ import annotations

import math
import re

import msgspec
from starlette.responses import Response

from agentrt.protocol.engine import EngineError, EngineOverloaded
from agentrt.protocol.openai import ErrorBody, ErrorDetail, encoder


class APIError(Exception):
    """An error answered to the client; ``status`` and ``type`` follow OpenAI's conventions."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        # Answered before the request body was read: the connection must not be reused.
        self.close_connection = close_connection

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type="authentication_error", code="invalid_api_key")


def not_found(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, type="not_found_error", param=param, code=code)


def body_too_large(limit: int) -> APIError:
    """A 413 that closes the connection: kept alive, the server would go on reading (and
    discarding) the rest of the body, however large the client says it is."""
    return APIError(
        413,
        f"request body exceeds the limit of {limit} bytes",
        type="invalid_request_error",
        code="request_too_large",
        close_connection=True,
    )


def body_timed_out(seconds: float) -> APIError:
    return APIError(
        408,
        f"the request body did not arrive within {seconds:g} s",
        type="invalid_request_error",
        code="request_timeout",
        close_connection=True,
    )


def overloaded(message: str, retry_after: float) -> APIError:
    return APIError(
        429, message, type="rate_limit_error", code="server_overloaded", retry_after=retry_after
    )


def from_engine_error(error: EngineError) -> APIError:
    retry_after = error.retry_after if isinstance(error, EngineOverloaded) else None
    return APIError(
        error.status,
        str(error),
        type=error.type,
        param=error.param,
        code=error.code,
        retry_after=retry_after,
    )


def internal_error() -> APIError:
    # The detail goes to the log, not to the client.
    return APIError(500, "internal server error", type="internal_error")


_PATH = re.compile(r"`\$\.([A-Za-z_][A-Za-z0-9_]*)")
_MISSING = re.compile(r"missing required field `([A-Za-z_][A-Za-z0-9_]*)`")


def from_decode_error(error: msgspec.DecodeError) -> APIError:
    """A body msgspec could not decode: malformed JSON or a field of the wrong type or value."""
    message = str(error)
    if isinstance(error, msgspec.ValidationError):
        match = _PATH.search(message) or _MISSING.search(message)
        return bad_request(
            f"invalid request body: {message}", param=match.group(1) if match else None
        )
    return bad_request(f"request body is not valid JSON: {message}", code="invalid_json")


def as_api_error(error: APIError | EngineError) -> APIError:
    return error if isinstance(error, APIError) else from_engine_error(error)


def error_headers(error: APIError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) for errors that suggest one;
    ``Connection: close`` for those answered before the body was read."""
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    if error.close_connection:
        headers["connection"] = "close"
    return headers


def error_response(error: APIError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encoder.encode(error.body()),
        status_code=error.status,
        headers={**(headers or {}), **error_headers(error)},
        media_type="application/json",
    )
