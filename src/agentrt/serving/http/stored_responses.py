"""``GET`` and ``DELETE /v1/responses/{response_id}``: the tenant's stored responses, as OpenAI's API.

A retrieval returns the response object as it was answered; a deletion
forgets it (a later ``previous_response_id`` naming it is refused) and
returns the deletion object. Both look only in the calling tenant's part of
the store (:mod:`.response_store`), so another tenant's ids are unknown ids:
a 404, as is an id that was never stored, was dropped or was deleted. A
server that stores nothing (``responses_store_size = 0``) answers 404 with
the code ``response_store_disabled``. Streaming a stored response again
(``?stream=true``) is refused with a 400.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agentrt.serving.http.bodies import json_response
from agentrt.serving.http.errors import APIError, bad_request, not_found
from agentrt.serving.http.response_store import ResponseStore
from agentrt.serving.http.state import server_state, tenant_of


async def retrieve_response(request: Request) -> Response:
    if request.query_params.get("stream", "false").strip().lower() not in ("false", "0", ""):
        raise bad_request(
            "stream is not supported when retrieving a stored response", param="stream"
        )
    store = _store(request)
    response_id = request.path_params["response_id"]
    body = store.response(tenant_of(request), response_id)
    if body is None:
        raise _unknown(response_id)
    return Response(body, media_type="application/json")


async def delete_response(request: Request) -> Response:
    store = _store(request)
    response_id = request.path_params["response_id"]
    if not store.delete(tenant_of(request), response_id):
        raise _unknown(response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


def _store(request: Request) -> ResponseStore:
    store = server_state(request).responses
    if not store.enabled:
        raise not_found(
            "this server stores no responses (responses_store_size is 0)",
            param="response_id",
            code="response_store_disabled",
        )
    return store


def _unknown(response_id: str) -> APIError:
    return not_found(
        f"Response with id {response_id!r} not found (never stored, made with store=false, "
        "dropped from the store or deleted)",
        param="response_id",
        code="response_not_found",
    )
