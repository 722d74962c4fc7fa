"""Request ids and access logs, and the exception handlers that answer in the OpenAI error schema."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineError
from agentrt.serving.http.errors import APIError, as_api_error, error_response, internal_error
from agentrt.serving.http.metrics import ServerMetrics

log = get_logger("agentrt.serving")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return error_response(as_api_error(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(
        APIError(exc.status_code, str(exc.detail), type=kind), dict(exc.headers or {})
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return error_response(internal_error())


# A client's x-request-id is echoed and logged only if it is a short token of these characters.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@\-]{{1,{MAX_REQUEST_ID}}}")
# What the access log and the metrics call a request whose client left before any answer (nginx's code).
CLIENT_CLOSED = 499


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``x-request-id`` when it is a safe token, else a fresh one.

    The id goes back in a response header and into every log line of the
    request: no control characters, no unbounded length.
    """
    given = next((v for k, v in headers if k == b"x-request-id"), b"")
    text = given.decode("latin-1")
    return text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex


class RequestIdMiddleware:
    """Echo (or assign) ``x-request-id``, bind it to the logs, log one line per request, count failures.

    A request whose client went away before it was answered is logged with
    status 499 and is not a failure of the server; one that ended in an
    unhandled exception counts as a 500.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Callable[[], ServerMetrics],
        log_requests: bool,
        log_level: int = logging.INFO,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        self.log_level = log_level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        started = time.monotonic()
        status = CLIENT_CLOSED  # until a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except ClientDisconnect:
                # The client left while its body was being read (or sent one the server could
                # not parse, and the server cut it off): nobody is left to answer.
                pass
            except Exception:
                if status == CLIENT_CLOSED:
                    status = 500
                raise
            finally:
                if status >= 400 and status != CLIENT_CLOSED:
                    self.metrics().failures.labels(status=str(status)).inc()
                if self.log_requests and scope["path"] not in ("/metrics", "/health"):
                    log.log(
                        self.log_level,
                        "request",
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        duration_ms=round((time.monotonic() - started) * 1e3, 3),
                        tenant=scope.get("state", {}).get("tenant", ""),
                    )
