"""Request ids and access logs, and the exception handlers that answer in the OpenAI error schema."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineError
from agentrt.serving.errors import APIError, as_api_error, error_response, internal_error
from agentrt.serving.metrics import ServerMetrics

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


class RequestIdMiddleware:
    """Echo (or assign) ``x-request-id``, bind it to the logs, log one line per request, count failures."""

    def __init__(
        self, app: ASGIApp, metrics: Callable[[], ServerMetrics], log_requests: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        request_id = request_id or uuid.uuid4().hex
        started = time.monotonic()
        status = 500

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
            finally:
                if status >= 400:
                    self.metrics().failures.labels(status=str(status)).inc()
                if self.log_requests and scope["path"] not in ("/metrics", "/health"):
                    log.info(
                        "request",
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        duration_ms=round((time.monotonic() - started) * 1e3, 3),
                        tenant=scope.get("state", {}).get("tenant", ""),
                    )
