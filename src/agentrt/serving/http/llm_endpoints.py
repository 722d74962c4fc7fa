"""``/v1/chat/completions`` and ``/v1/completions``: validate, take a server slot, run the calls, answer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineError, GenerationRequest
from agentrt.protocol.headers import CallHeaders
from agentrt.protocol.openai import chat_request_decoder, completion_request_decoder, encoder
from agentrt.serving.http.auth import scoped_id, unscoped_id
from agentrt.serving.http.bodies import call_headers, decode_body, program_tag
from agentrt.serving.http.calls import CallTracker
from agentrt.serving.http.chat import answer_chat
from agentrt.serving.http.completions import answer_completion
from agentrt.serving.http.errors import APIError, as_api_error, error_headers, internal_error
from agentrt.serving.http.exchange import Channel, Exchange
from agentrt.serving.http.generation import Generation
from agentrt.serving.http.params import chat_request, check_model, completion_requests
from agentrt.serving.http.state import ServerState, server_state, tenant_of

log = get_logger("agentrt.serving")


def _generation_exchange(
    state: ServerState,
    gen: Generation,
    interrupt: float,
    answer: Callable[[Channel], Awaitable[None]],
    tenant: str,
) -> Exchange:
    """Run ``answer`` in a server slot; errors before the response started become JSON errors."""

    async def handler(channel: Channel) -> None:
        try:
            async with state.limiter.slot(tenant, len(gen.trackers)):
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


@dataclass
class _Intake:
    """What both LLM endpoints read off a request before building their engine calls."""

    state: ServerState
    body: Any
    models: dict[str, str]
    headers: CallHeaders | None
    tenant: str
    call_id: str  # the client's id (x-agentrt-call) or a fresh one
    arrival: float

    @property
    def engine_call_id(self) -> str:
        return scoped_id(self.tenant, self.call_id)

    @property
    def interrupt(self) -> float:
        return self.headers.interrupt_seconds if self.headers else 0.0

    def generation(self, requests: list[GenerationRequest], prefix: str) -> Generation:
        for r in requests:
            r.model = self.models[self.body.model]
        return _generation(
            self.state,
            requests,
            prefix + self.call_id,
            self.body.model,
            self.headers,
            bool(self.body.stream) and _usage(self.body),
            self.tenant,
        )


async def _intake(request: Request, decoder: Any) -> _Intake:
    state = server_state(request)
    arrival = time.monotonic()
    body = await decode_body(request, decoder, state.config)
    models = state.served_models()
    check_model(body.model, set(models))
    headers = call_headers(request)
    return _Intake(
        state=state,
        body=body,
        models=models,
        headers=headers,
        tenant=tenant_of(request),
        call_id=(headers.call_id if headers else None) or uuid.uuid4().hex,
        arrival=arrival,
    )


async def chat_completions(request: Request) -> Exchange:
    call = await _intake(request, chat_request_decoder)
    gen_request, tool_names = chat_request(
        call.body,
        call.state.config,
        call_id=call.engine_call_id,
        program=program_tag(call.tenant, call.headers),
        arrival=call.arrival,
    )
    gen = call.generation([gen_request], "chatcmpl-")
    stream = bool(call.body.stream)
    return _generation_exchange(
        call.state,
        gen,
        call.interrupt,
        lambda ch: answer_chat(gen, ch, tool_names, stream),
        call.tenant,
    )


async def completions(request: Request) -> Exchange:
    call = await _intake(request, completion_request_decoder)
    requests = completion_requests(
        call.body,
        call.state.config,
        call_id=call.engine_call_id,
        program=program_tag(call.tenant, call.headers),
        arrival=call.arrival,
    )
    gen = call.generation(requests, "cmpl-")
    echo = [r.prompt for r in requests if isinstance(r.prompt, str)] if call.body.echo else None
    stream = bool(call.body.stream)
    return _generation_exchange(
        call.state,
        gen,
        call.interrupt,
        lambda ch: answer_completion(gen, ch, stream, echo),
        call.tenant,
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
