"""The OpenAI-compatible ASGI app over one :class:`EngineClient` (an engine, or the router).

``create_app(engine, config)`` returns a Starlette app with
``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/v1/programs``, ``/health`` and ``/metrics``. The same app is served by
uvicorn (``agentrt serve``) and in-process (:mod:`agentrt.serving.inprocess`).
Bodies are decoded once, with typed msgspec decoders; every error is an
OpenAI error body with its status; a request whose client goes away aborts
its engine call at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentrt.log import get_logger
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
from agentrt.protocol.headers import (
    PROGRAM,
    CallHeaders,
    HeaderError,
    parse_asgi_headers,
    parse_headers,
)
from agentrt.protocol.openai import (
    Model,
    ModelList,
    chat_request_decoder,
    completion_request_decoder,
    encoder,
)
from agentrt.protocol.programs import program_start_decoder
from agentrt.serving.auth import AuthMiddleware, KeyRing, scoped_id, unscoped_id
from agentrt.serving.calls import CallTracker
from agentrt.serving.chat import answer_chat
from agentrt.serving.completions import answer_completion
from agentrt.serving.config import ServerConfig
from agentrt.serving.errors import (
    APIError,
    as_api_error,
    bad_request,
    body_too_large,
    error_headers,
    error_response,
    from_decode_error,
    internal_error,
    not_found,
)
from agentrt.serving.exchange import Channel, Exchange
from agentrt.serving.generation import Generation
from agentrt.serving.limits import RequestLimiter
from agentrt.serving.metrics import CONTENT_TYPE, ServerMetrics
from agentrt.serving.params import chat_request, check_model, completion_requests
from agentrt.serving.programs import ProgramDirectory

log = get_logger("agentrt.serving")
T = TypeVar("T")


class ServerState:
    """Everything the endpoints share; one per app, at ``app.state.server``."""

    def __init__(self, engine: EngineClient, config: ServerConfig, keys: KeyRing) -> None:
        self.engine = engine
        self.config = config
        self.keys = keys
        self.limiter = RequestLimiter(
            config.max_concurrent_requests,
            config.max_queued_requests,
            config.queue_timeout,
            config.retry_after,
        )
        self.metrics = ServerMetrics(
            self._engine_stats, lambda: self.limiter.queued, lambda: len(self.programs)
        )
        self.programs = ProgramDirectory(self.metrics)

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


def _server(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _tenant(request: Request) -> str:
    return str(request.scope.get("state", {}).get("tenant", ""))


# ---------------------------------------------------------------------------- bodies and headers


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_body(request: Request, decoder: msgspec.json.Decoder[T], limit: int) -> T:
    raw = await read_body(request, limit)
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise from_decode_error(e) from None


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


# ---------------------------------------------------------------------------- generation endpoints


def _generation_exchange(
    state: ServerState,
    gen: Generation,
    interrupt: float,
    answer: Callable[[Channel], Awaitable[None]],
) -> Exchange:
    """Run ``answer`` in a server slot; errors before the response started become JSON errors."""

    async def handler(channel: Channel) -> None:
        try:
            async with state.limiter.slot():
                for t in gen.trackers:
                    state.programs.call_started(t.request, interrupt)
                try:
                    await answer(channel)
                finally:
                    gen.abandoned()
        except (APIError, EngineError) as e:
            if channel.started:
                raise
            error = as_api_error(e)
            await channel.json(
                error.status,
                encoder.encode(error.body()),
                {**error_headers(error), **gen.headers(None)},
            )
        except Exception:
            if channel.started:
                raise
            log.exception("generation failed", response_id=gen.response_id)
            error = internal_error()
            await channel.json(error.status, encoder.encode(error.body()))

    return Exchange(handler)


async def chat_completions(request: Request) -> Exchange:
    state = _server(request)
    arrival = time.monotonic()
    body = await decode_body(request, chat_request_decoder, state.config.max_body_bytes)
    models = state.served_models()
    check_model(body.model, set(models))
    headers = call_headers(request)
    tenant = _tenant(request)
    call_id = (headers.call_id if headers else None) or uuid.uuid4().hex
    engine_call_id = scoped_id(tenant, call_id)
    gen_request, tool_names = chat_request(
        body,
        state.config,
        call_id=engine_call_id,
        program=program_tag(tenant, headers),
        arrival=arrival,
    )
    gen_request.model = models[body.model]
    gen = _generation(
        state,
        [gen_request],
        "chatcmpl-" + call_id,
        body.model,
        headers,
        bool(body.stream) and _usage(body),
        tenant,
    )
    return _generation_exchange(
        state,
        gen,
        headers.interrupt_seconds if headers else 0.0,
        lambda ch: answer_chat(gen, ch, tool_names, bool(body.stream)),
    )


async def completions(request: Request) -> Exchange:
    state = _server(request)
    arrival = time.monotonic()
    body = await decode_body(request, completion_request_decoder, state.config.max_body_bytes)
    models = state.served_models()
    check_model(body.model, set(models))
    headers = call_headers(request)
    tenant = _tenant(request)
    call_id = (headers.call_id if headers else None) or uuid.uuid4().hex
    engine_call_id = scoped_id(tenant, call_id)
    requests = completion_requests(
        body,
        state.config,
        call_id=engine_call_id,
        program=program_tag(tenant, headers),
        arrival=arrival,
    )
    for r in requests:
        r.model = models[body.model]
    echo = [r.prompt for r in requests if isinstance(r.prompt, str)] if body.echo else None
    gen = _generation(
        state,
        requests,
        "cmpl-" + call_id,
        body.model,
        headers,
        bool(body.stream) and _usage(body),
        tenant,
    )
    return _generation_exchange(
        state,
        gen,
        headers.interrupt_seconds if headers else 0.0,
        lambda ch: answer_completion(gen, ch, bool(body.stream), echo),
    )


def _usage(body: Any) -> bool:
    return bool(body.stream_options is not None and body.stream_options.include_usage)


def _generation(
    state: ServerState,
    requests: list[GenerationRequest],
    response_id: str,
    model: str,
    headers: CallHeaders | None,
    include_usage: bool,
    tenant: str,
) -> Generation:
    return Generation(
        engine=state.engine,
        trackers=[CallTracker(r, state.metrics, unscoped_id(tenant, r.call_id)) for r in requests],
        programs=state.programs,
        response_id=response_id,
        model=model,
        program_id=headers.program_id if headers else None,
        include_usage=include_usage,
    )


# ---------------------------------------------------------------------------- models, programs, health, metrics


def _json(value: Any, status: int = 200) -> Response:
    return Response(encoder.encode(value), status_code=status, media_type="application/json")


async def list_models(request: Request) -> Response:
    state = _server(request)
    infos = {m.id: m for m in state.engine.models()}
    created = int(request.app.state.started)
    data = [
        Model(
            id=name,
            created=created,
            owned_by=infos[engine_id].owned_by,
            max_model_len=infos[engine_id].max_model_len,
        )
        for name, engine_id in state.served_models().items()
        if engine_id in infos
    ]
    if "model_id" in request.path_params:
        match = [m for m in data if m.id == request.path_params["model_id"]]
        if not match:
            raise not_found(
                f"The model `{request.path_params['model_id']}` does not exist.",
                code="model_not_found",
            )
        return _json(match[0])
    return _json(ModelList(data=data))


async def start_program(request: Request) -> Response:
    state = _server(request)
    body = await decode_body(request, program_start_decoder, state.config.max_body_bytes)
    tenant = _tenant(request)
    try:
        parse_headers({PROGRAM: body.program_id})
    except HeaderError as e:
        raise bad_request(f"invalid program_id: {e}", param="program_id") from None
    info = state.programs.start(tenant, body)
    await state.engine.start_program(
        ProgramTag(program_id=scoped_id(tenant, body.program_id), tenant=tenant)
    )
    return _json(info)


async def end_program(request: Request) -> Response:
    state = _server(request)
    tenant = _tenant(request)
    program_id = request.path_params["program_id"]
    info = state.programs.end(tenant, program_id)
    if info is None:
        raise _unknown_program(program_id)
    await state.engine.end_program(scoped_id(tenant, program_id))
    return _json(info)


async def get_program(request: Request) -> Response:
    state = _server(request)
    program_id = request.path_params["program_id"]
    info = state.programs.get(_tenant(request), program_id)
    if info is None:
        raise _unknown_program(program_id)
    return _json(info)


async def list_programs(request: Request) -> Response:
    state = _server(request)
    return _json({"object": "list", "data": state.programs.list(_tenant(request))})


def _unknown_program(program_id: str) -> APIError:
    return not_found(f"no program {program_id!r}", param="program_id", code="program_not_found")


async def health(request: Request) -> Response:
    try:
        stats = _server(request).engine.stats()
    except EngineError as e:
        return error_response(as_api_error(e))
    return JSONResponse({"status": "ok", "running": stats.running, "waiting": stats.waiting})


async def metrics(request: Request) -> Response:
    return Response(_server(request).metrics.exposition(), media_type=CONTENT_TYPE)


# ---------------------------------------------------------------------------- errors and middleware


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return error_response(as_api_error(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(
        APIError(exc.status_code, str(exc.detail), type=kind), dict(exc.headers or {})
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
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


EngineSource = EngineClient | Callable[[], AbstractAsyncContextManager[EngineClient]]


def create_app(
    engine: EngineSource, config: ServerConfig | None = None, *, close_engine: bool = True
) -> Starlette:
    """The app over ``engine``.

    ``engine`` is a running :class:`EngineClient`, or a factory of an async
    context manager that yields one: the app's lifespan enters it at
    startup (loading the model) and exits it at shutdown. A given engine is
    closed at shutdown when ``close_engine`` is true.
    """
    config = config or ServerConfig()
    state = ServerState(
        engine if isinstance(engine, EngineClient) else _NotStarted(),
        config,
        KeyRing.from_config(config.api_keys, config.api_key_file),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if not isinstance(engine, EngineClient):
                state.engine = await stack.enter_async_context(engine())
            elif close_engine:
                stack.push_async_callback(engine.close)
            log.info("serving", models=list(state.served_models()), auth=state.keys.enabled)
            yield

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", list_models, methods=["GET"]),
        Route("/v1/programs", start_program, methods=["POST"]),
        Route("/v1/programs", list_programs, methods=["GET"]),
        Route("/v1/programs/{program_id}", get_program, methods=["GET"]),
        Route("/v1/programs/{program_id}", end_program, methods=["DELETE"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                RequestIdMiddleware, metrics=lambda: state.metrics, log_requests=config.log_requests
            ),
            Middleware(AuthMiddleware, keys=state.keys),
        ],
        exception_handlers={
            APIError: _api_error,
            EngineError: _engine_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.started = time.time()
    return app


class _NotStarted:
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
