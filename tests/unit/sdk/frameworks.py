"""An in-process agentrt server on the echo engine, reached the way a framework reaches a server.

Frameworks build their own ``openai`` clients from a base URL and an HTTP
client; here the HTTP client is a plain httpx(2) client over agentrt's
in-process transport, and nothing else in it comes from agentrt. The echo
engine answers with the last message, so a user message that is a
``<tool_call>`` makes the server return that tool call, and the tool's output
becomes the next answer.
"""

from __future__ import annotations

import json
from typing import Any

import agentrt
from agentrt.sdk.openai_clients import IN_PROCESS_BASE_URL
from agentrt.serving import inprocess
from agentrt.testing.echo import EchoEngine

BASE_URL = IN_PROCESS_BASE_URL
PAUSE = 0.4  # seconds of tool work between two calls


def tool_call(name: str, **arguments: Any) -> str:
    """A user message the echo engine turns into a call of tool ``name``."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class Server:
    def __init__(self) -> None:
        self.engine = EchoEngine()
        self.app = agentrt.serve_in_process(self.engine)

    def async_http(self) -> Any:
        return inprocess.http.AsyncClient(transport=inprocess.AsyncASGITransport(self.app))

    def sync_http(self) -> Any:
        return inprocess.http.Client(transport=inprocess.SyncASGITransport(self.app))

    async def program(self, program_id: str) -> dict[str, Any] | None:
        """``GET /v1/programs/{id}``: the server's view, or None once the program ended."""
        async with self.async_http() as http:
            response = await http.get(f"{BASE_URL}/programs/{program_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info


def assert_seen(info: dict[str, Any] | None, name: str, calls: int, interrupt: float) -> None:
    """The server knows the program by name, every call, and at least ``interrupt`` seconds."""
    assert info is not None
    assert info["name"] == name
    assert info["num_calls"] == calls and len(info["calls"]) == calls
    assert info["interrupt_seconds"] >= interrupt
