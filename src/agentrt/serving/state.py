"""What every endpoint shares: the server state, the caller's tenant, reading bodies and headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agentrt.protocol.engine import (
    EngineClient,
    EngineError,
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
)
from agentrt.protocol.headers import CallHeaders, HeaderError, parse_asgi_headers
from agentrt.protocol.openai import encoder
from agentrt.serving.auth import KeyRing, scoped_id
from agentrt.serving.config import ServerConfig
from agentrt.serving.errors import bad_request, body_timed_out, body_too_large, from_decode_error
from agentrt.serving.limits import RequestLimiter, TenantLimiter
from agentrt.serving.metrics import ServerMetrics
from agentrt.serving.programs import ProgramDirectory

T = TypeVar("T")


class ServerState:
    """Everything the endpoints share; one per app, at ``app.state.server``."""

    def __init__(self, engine: EngineClient, config: ServerConfig, keys: KeyRing) -> None:
        self.engine = engine
        self.config = config
        self.keys = keys
        server = RequestLimiter(
            config.max_concurrent_requests,
            config.max_queued_requests,
            config.queue_timeout,
            config.retry_after,
        )
        self.limiter = TenantLimiter(server, self._tenant_share)
        self.metrics = ServerMetrics(
            self._engine_stats, lambda: self.limiter.queued, lambda: len(self.programs)
        )
        self.programs = ProgramDirectory(self.metrics, max_programs=self._tenant_programs)

    def _tenant_share(self, tenant: str) -> tuple[int, int]:
        """A tenant's in-flight and queued requests: its key-file entry, else the config's, else
        half the server's when several tenants share it (so no one of them can take it all)."""
        config, own = self.config, self.keys.limits.get(tenant)
        shared = len(self.keys.tenants) >= 2
        concurrent = (own and own.max_concurrent_requests) or config.tenant_max_concurrent_requests
        if concurrent is None:
            concurrent = (
                max(1, config.max_concurrent_requests // 2)
                if shared
                else config.max_concurrent_requests
            )
        queued = own.max_queued_requests if own and own.max_queued_requests is not None else None
        if queued is None:
            queued = config.tenant_max_queued_requests
        if queued is None:
            queued = config.max_queued_requests // 2 if shared else config.max_queued_requests
        return concurrent, queued

    def _tenant_programs(self, tenant: str) -> int:
        own = self.keys.limits.get(tenant)
        return (own and own.max_programs) or self.config.tenant_max_programs

    def _engine_stats(self) -> EngineStats:
        try:
            return self.engine.stats()
        except EngineError:
            return EngineStats()

    def served_models(self) -> dict[str, str]:
        """Model name a client may use -> the engine's model id."""
        names: dict[str, str] = {}
        for info in self.engine.models():
            names[info.id] = info.id
        if self.config.served_model_name:
            first = next(iter(names.values()), "")
            names[self.config.served_model_name] = first
        return names


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def tenant_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("tenant", ""))


# ---------------------------------------------------------------------------- bodies and headers


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading them all,
    and a body that takes more than ``seconds`` to arrive (408): a client sending a
    byte now and then must not hold a connection and a task for ever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(seconds) as deadline:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
    if deadline.cancelled_caught:
        raise body_timed_out(seconds)
    return b"".join(chunks)


async def decode_body(
    request: Request, decoder: msgspec.json.Decoder[T], config: ServerConfig
) -> T:
    raw = await read_body(request, config.max_body_bytes, config.body_timeout)
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise from_decode_error(e) from None
    except RecursionError:
        # msgspec recurses once per nesting level, even inside fields it ignores.
        raise bad_request("request body is nested too deeply", code="invalid_json") from None


def call_headers(request: Request) -> CallHeaders | None:
    try:
        return parse_asgi_headers(request.scope["headers"])
    except HeaderError as e:
        raise bad_request(str(e), param=e.header) from None


def program_tag(tenant: str, headers: CallHeaders | None) -> ProgramTag | None:
    if headers is None:
        return None
    return ProgramTag(
        program_id=scoped_id(tenant, headers.program_id),
        thread_id=headers.thread_id,
        parent_call_id=headers.parent_call_id,
        tenant=tenant,
    )


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encoder.encode(value), status_code=status, media_type="application/json")


class NotStarted:
    """Stands in for an engine that the lifespan has not built yet: every use is a 503."""

    def _fail(self) -> EngineUnavailable:
        return EngineUnavailable("the engine is starting")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        raise self._fail()
        yield  # pragma: no cover - makes this an async generator

    async def abort(self, call_id: str) -> None:
        return None

    def stats(self) -> EngineStats:
        raise self._fail()

    def models(self) -> list[ModelInfo]:
        return []

    async def start_program(self, tag: ProgramTag) -> None:
        raise self._fail()

    async def end_program(self, program_id: str) -> None:
        raise self._fail()

    async def close(self) -> None:
        return None
