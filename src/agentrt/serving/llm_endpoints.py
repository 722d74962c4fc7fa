"""``/v1/chat/completions`` and ``/v1/completions``: validate, take a server slot, run the calls, answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineError, GenerationRequest
from agentrt.protocol.headers import CallHeaders
from agentrt.protocol.openai import chat_request_decoder, completion_request_decoder, encoder
from agentrt.serving.auth import scoped_id, unscoped_id
from agentrt.serving.calls import CallTracker
from agentrt.serving.chat import answer_chat
from agentrt.serving.completions import answer_completion
from agentrt.serving.errors import APIError, as_api_error, error_headers, internal_error
from agentrt.serving.exchange import Channel, Exchange
from agentrt.serving.generation import Generation
from agentrt.serving.params import chat_request, check_model, completion_requests
from agentrt.serving.state import (
    ServerState,
    call_headers,
    decode_body,
    program_tag,
    server_state,
    tenant_of,
)

log = get_logger("agentrt.serving")


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
    state = server_state(request)
    arrival = time.monotonic()
    body = await decode_body(request, chat_request_decoder, state.config.max_body_bytes)
    models = state.served_models()
    check_model(body.model, set(models))
    headers = call_headers(request)
    tenant = tenant_of(request)
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
    state = server_state(request)
    arrival = time.monotonic()
    body = await decode_body(request, completion_request_decoder, state.config.max_body_bytes)
    models = state.served_models()
    check_model(body.model, set(models))
    headers = call_headers(request)
    tenant = tenant_of(request)
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
