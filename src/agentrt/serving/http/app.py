"""The OpenAI-compatible ASGI app over one :class:`EngineClient` (an engine, or the router).

``create_app(engine, config)`` returns a Starlette app with
``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (and ``GET``/``DELETE``
``/v1/responses/{id}``), ``/v1/models``,
``/v1/programs``, ``/health`` and ``/metrics``. The same app is served by
uvicorn (``agentrt serve``) and in-process (:mod:`agentrt.serving.inprocess`).
Bodies are decoded once, with typed msgspec decoders; every error is an
OpenAI error body with its status; a request whose client goes away aborts
its engine call at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineClient, EngineError
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.auth import AuthMiddleware, KeyRing
from agentrt.serving.http.endpoints import (
    end_program,
    engine_stats,
    get_program,
    health,
    list_models,
    list_programs,
    metrics,
    program_tool,
    start_program,
)
from agentrt.serving.http.errors import APIError
from agentrt.serving.http.llm_endpoints import chat_completions, completions, responses
from agentrt.serving.http.middleware import (
    RequestIdMiddleware,
    api_error,
    engine_error,
    http_error,
    unexpected_error,
)
from agentrt.serving.http.pending import NotStarted
from agentrt.serving.http.state import ServerState
from agentrt.serving.http.stored_responses import delete_response, retrieve_response

log = get_logger("agentrt.serving")

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
        engine if isinstance(engine, EngineClient) else NotStarted(),
        config,
        KeyRing.from_config(config.api_keys, config.api_key_file),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if not isinstance(engine, EngineClient):
                try:
                    state.engine = await stack.enter_async_context(engine())
                except Exception as e:
                    log.error("engine failed to start", error=f"{type(e).__name__}: {e}")
                    raise
            elif close_engine:
                stack.push_async_callback(engine.close)
            log.log(
                state.log_level,
                "serving",
                models=list(state.served_models()),
                auth=state.keys.enabled,
            )
            yield

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", list_models, methods=["GET"]),
        Route("/v1/programs", start_program, methods=["POST"]),
        Route("/v1/programs", list_programs, methods=["GET"]),
        Route("/v1/programs/{program_id}", get_program, methods=["GET"]),
        Route("/v1/programs/{program_id}", end_program, methods=["DELETE"]),
        Route("/v1/programs/{program_id}/tool", program_tool, methods=["POST"]),
        Route("/v1/engine/stats", engine_stats, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                RequestIdMiddleware,
                metrics=lambda: state.metrics,
                log_requests=config.log_requests,
                log_level=state.log_level,
            ),
            Middleware(AuthMiddleware, keys=state.keys),
        ],
        exception_handlers={
            APIError: api_error,
            EngineError: engine_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.started = time.time()
    return app
