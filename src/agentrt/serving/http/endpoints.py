"""``/v1/models``, ``/v1/programs`` (start, inspect, list, end, tool signals), ``/v1/engine/stats``,
``/health`` and ``/metrics``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agentrt.protocol.engine import EngineError, ProgramTag, ToolSignals
from agentrt.protocol.headers import PROGRAM, HeaderError, parse_headers
from agentrt.protocol.openai import Model, ModelList
from agentrt.protocol.programs import program_start_decoder, tool_event_decoder
from agentrt.serving.http.auth import scoped_id
from agentrt.serving.http.bodies import decode_body, json_response
from agentrt.serving.http.errors import (
    APIError,
    as_api_error,
    bad_request,
    error_response,
    not_found,
)
from agentrt.serving.http.metrics import CONTENT_TYPE
from agentrt.serving.http.state import server_state, tenant_of


async def list_models(request: Request) -> Response:
    state = server_state(request)
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
        return json_response(match[0])
    return json_response(ModelList(data=data))


async def start_program(request: Request) -> Response:
    state = server_state(request)
    body = await decode_body(request, program_start_decoder, state.config)
    tenant = tenant_of(request)
    try:
        parsed = parse_headers({PROGRAM: body.program_id})
    except HeaderError as e:
        raise bad_request(f"invalid program_id: {e}", param="program_id") from None
    if parsed is None:  # an empty header means "no program"; a program needs an id
        raise bad_request("program_id must not be empty", param="program_id")
    body.program_id = parsed.program_id  # as the calls' headers will name it (stripped)
    try:
        info = state.programs.start(tenant, body)
    except ValueError as e:
        raise bad_request(str(e), param="metadata") from None
    await state.engine.start_program(
        ProgramTag(program_id=scoped_id(tenant, body.program_id), tenant=tenant)
    )
    return json_response(info)


async def end_program(request: Request) -> Response:
    state = server_state(request)
    tenant = tenant_of(request)
    program_id = request.path_params["program_id"]
    info = state.programs.end(tenant, program_id)
    if info is None:
        raise _unknown_program(program_id)
    await state.engine.end_program(scoped_id(tenant, program_id))
    return json_response(info)


async def program_tool(request: Request) -> Response:
    """A thread of the program entered or left a tool: 204, forwarded to an engine that
    listens (its KV retention holds the program's context meanwhile). Unknown programs are
    no error: the signal is advisory, and a 404 tells the SDK the route does not exist."""
    state = server_state(request)
    body = await decode_body(request, tool_event_decoder, state.config)
    try:
        parsed = parse_headers({PROGRAM: request.path_params["program_id"]})
    except HeaderError as e:
        raise bad_request(f"invalid program id: {e}", param="program_id") from None
    if parsed is None:
        raise bad_request("the program id must not be empty", param="program_id")
    engine = state.engine
    if isinstance(engine, ToolSignals):
        await engine.tool_event(scoped_id(tenant_of(request), parsed.program_id), body)
    return Response(status_code=204)


async def get_program(request: Request) -> Response:
    state = server_state(request)
    program_id = request.path_params["program_id"]
    info = state.programs.get(tenant_of(request), program_id)
    if info is None:
        raise _unknown_program(program_id)
    return json_response(info)


async def list_programs(request: Request) -> Response:
    state = server_state(request)
    return json_response({"object": "list", "data": state.programs.list(tenant_of(request))})


def _unknown_program(program_id: str) -> APIError:
    return not_found(f"no program {program_id!r}", param="program_id", code="program_not_found")


async def health(request: Request) -> Response:
    try:
        stats = server_state(request).engine.stats()
    except EngineError as e:
        return error_response(as_api_error(e))
    return JSONResponse({"status": "ok", "running": stats.running, "waiting": stats.waiting})


async def engine_stats(request: Request) -> Response:
    """The engine's load and counters as JSON (summed over engines behind the router),
    including the step-time sums an operator or ``agentrt bench`` fits a cost model to."""
    try:
        return json_response(server_state(request).engine.stats())
    except EngineError as e:
        return error_response(as_api_error(e))


async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.exposition(), media_type=CONTENT_TYPE)
