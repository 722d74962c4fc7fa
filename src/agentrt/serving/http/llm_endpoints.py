"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/responses``: one handler each, from the request to its answer.

Each handler reads the request (:func:`_intake`: body, model, program
headers), turns it into engine calls (:mod:`.params`), pairs them with the
endpoint's renderer (:mod:`.chat`, :mod:`.completions`, :mod:`.responses`) and returns the
:class:`~.generation.Generation` that runs them, as an :class:`~.exchange.Exchange`
that cancels it if the client goes away. A request refused at intake raises
before anything is sent, and the app answers it as a JSON error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from agentrt.protocol.engine import GenerationRequest, ProgramTag
from agentrt.protocol.headers import CallHeaders
from agentrt.protocol.openai import chat_request_decoder, completion_request_decoder, encoder
from agentrt.protocol.responses import responses_request_decoder
from agentrt.serving.http.auth import scoped_id, unscoped_id
from agentrt.serving.http.bodies import call_headers, decode_body, program_tag
from agentrt.serving.http.calls import CallTracker
from agentrt.serving.http.chat import ChatRenderer
from agentrt.serving.http.completions import CompletionRenderer
from agentrt.serving.http.exchange import Exchange
from agentrt.serving.http.generation import Generation
from agentrt.serving.http.params import chat_request, check_model, completion_requests
from agentrt.serving.http.render import Renderer, Reply
from agentrt.serving.http.response_params import responses_call
from agentrt.serving.http.responses import ResponsesRenderer
from agentrt.serving.http.state import ServerState, server_state, tenant_of


async def chat_completions(request: Request) -> Exchange:
    intake = await _intake(request, chat_request_decoder)
    call, tool_names = chat_request(
        intake.body,
        intake.state.config,
        call_id=intake.engine_call_id,
        program=intake.program,
        arrival=intake.arrival,
    )
    reply = intake.reply([call], "chatcmpl-")
    return intake.exchange(ChatRenderer(reply, tool_names))


async def completions(request: Request) -> Exchange:
    intake = await _intake(request, completion_request_decoder)
    calls = completion_requests(
        intake.body,
        intake.state.config,
        call_id=intake.engine_call_id,
        program=intake.program,
        arrival=intake.arrival,
    )
    reply = intake.reply(calls, "cmpl-")
    echo = [c.prompt for c in calls if isinstance(c.prompt, str)] if intake.body.echo else None
    return intake.exchange(CompletionRenderer(reply, echo))


async def responses(request: Request) -> Exchange:
    intake = await _intake(request, responses_request_decoder)
    body, state = intake.body, intake.state
    call = responses_call(
        body,
        state.config,
        state.responses,
        tenant=intake.tenant,
        call_id=intake.engine_call_id,
        program=intake.program,
        arrival=intake.arrival,
    )
    reply = intake.reply([call.request], "resp_")
    store = state.responses.enabled and body.store is not False
    renderer = ResponsesRenderer(reply, body, call.tool_names, stored=store)

    def keep() -> None:
        # Stored: the conversation for previous_response_id, and the response object as
        # answered (store true) for GET /v1/responses/{id}; the answer says whether it fit.
        if store:
            conversation = (*call.conversation, renderer.output_message())
            stored = encoder.encode(renderer.body())
            renderer.stored = state.responses.put(
                intake.tenant, reply.response_id, conversation, stored
            )

    return intake.exchange(renderer, on_done=keep)


@dataclass
class _Intake:
    """What every endpoint reads off a request before building its engine calls."""

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
    def program(self) -> ProgramTag | None:
        return program_tag(self.tenant, self.headers)

    def reply(self, calls: list[GenerationRequest], prefix: str) -> Reply:
        """The answer's record: the engine's model name on each call, a tracker per call."""
        metrics = self.state.metrics
        for c in calls:
            c.model = self.models[self.body.model]
        options = self.body.stream_options
        return Reply(
            response_id=prefix + self.call_id,
            model=self.body.model,
            trackers=[CallTracker(c, metrics, unscoped_id(self.tenant, c.call_id)) for c in calls],
            program_id=self.headers.program_id if self.headers else None,
            include_usage=bool(self.body.stream and options is not None and options.include_usage),
        )

    def exchange(self, renderer: Renderer, on_done: Callable[[], None] | None = None) -> Exchange:
        return Exchange(
            Generation(
                state=self.state,
                renderer=renderer,
                tenant=self.tenant,
                stream=bool(self.body.stream),
                interrupt=self.headers.interrupt_seconds if self.headers else 0.0,
                on_done=on_done,
            ),
            log_level=self.state.log_level,
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
