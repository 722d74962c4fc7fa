"""Reading a request's body and call headers, and writing a JSON body."""

from __future__ import annotations

from typing import Any, TypeVar

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agentrt.protocol.engine import ProgramTag
from agentrt.protocol.headers import CallHeaders, HeaderError, parse_asgi_headers
from agentrt.protocol.openai import encoder
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.auth import scoped_id
from agentrt.serving.http.errors import (
    bad_request,
    body_timed_out,
    body_too_large,
    from_decode_error,
)

T = TypeVar("T")


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
