"""A client that leaves is not a server failure; what a client sends as its request id is bounded.

These drive the ASGI app directly: a disconnect is an ``http.disconnect``
message from ``receive`` at the moment the test chooses.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest
from tests.unit.serving.inprocess_clients import raw_client, serving

from agentrt.testing.echo import EchoEngine

CHAT = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "a b c d"}]}).encode()


def failures(app: Any) -> dict[str, float]:
    text = raw_client(app).get("/metrics").text
    pattern = r'^agentrt:request_failure_total\{status="(\d+)"\} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


async def call(
    app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    """Run one POST /v1/chat/completions with ``receive`` replaying ``messages``, then waiting for ever."""
    sent: list[dict[str, Any]] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("agentrt.test", 80),
    }
    with anyio.fail_after(10):
        await app(scope, receive, send)
    return sent


async def test_a_client_that_leaves_while_its_call_runs_is_not_a_500() -> None:
    with serving(EchoEngine(token_delay=0.2)) as (app, _):
        sent = await call(
            app,
            [
                {"type": "http.request", "body": CHAT, "more_body": False},
                {"type": "http.disconnect"},
            ],
            [],
        )
        assert sent == []
        assert failures(app) == {}


async def test_a_body_cut_off_by_the_server_is_not_an_unhandled_error() -> None:
    """uvicorn answers a malformed chunked body itself and tells the app the client is gone."""
    with serving() as (app, engine):
        sent = await call(
            app,
            [
                {"type": "http.request", "body": CHAT[:10], "more_body": True},
                {"type": "http.disconnect"},
            ],
            [],
        )
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] == []
        assert failures(app) == {}
        assert engine.requests == []


@pytest.mark.parametrize(
    "given",
    [
        b"a" * 129,
        b"evil\r\nset-cookie: x=1",
        b"tab\there",
        b"\x00",
        "caf\u00e9".encode("latin-1"),
        b"",
    ],
)
def test_an_unsafe_request_id_is_replaced_not_echoed(given: bytes) -> None:
    with serving() as (app, _):
        reply = raw_client(app).get("/v1/models", headers={"x-request-id": given})
    echoed = reply.headers["x-request-id"]
    assert echoed != given.decode("latin-1")
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)


def test_a_safe_request_id_is_echoed() -> None:
    rid = "trace-01J9:abc/def+g=@x." + "z" * 100
    with serving() as (app, _):
        reply = raw_client(app).get("/v1/models", headers={"x-request-id": rid})
    assert reply.headers["x-request-id"] == rid
