"""A recording OpenAI-compatible server behind an httpx MockTransport, for the SDK tests.

It answers valid OpenAI JSON (chat, completions, responses-free) and SSE
streams, implements (or refuses, as configured) the ``/v1/programs``
endpoints, and records every request with the agentrt headers it carried.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

import agentrt
from agentrt.protocol import headers as h

BASE_URL = "http://llm.test/v1"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def program(self) -> str | None:
        return self.headers.get(h.PROGRAM)

    @property
    def thread(self) -> str | None:
        return self.headers.get(h.THREAD)

    @property
    def parent(self) -> str | None:
        return self.headers.get(h.PARENT_CALL)

    @property
    def call(self) -> str | None:
        return self.headers.get(h.CALL)

    @property
    def prompt(self) -> str:
        messages = self.body.get("messages") or [{"content": self.body.get("prompt", "")}]
        return str(messages[-1]["content"])


def chat_completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chat_chunks(words: list[str], finish: bool = True) -> bytes:
    """An SSE chat stream of ``words``; without ``finish`` it stops before the finish chunk."""
    events = []
    for i, word in enumerate(words):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        chunk = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "test-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n")
    if not finish:
        return "".join(events).encode()
    last = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events.append(f"data: {json.dumps(last)}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


def text_completion(text: str) -> dict[str, Any]:
    return {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
    }


@dataclass
class RecordingServer:
    """``programs``: "supported" (201/200), or an HTTP status the program endpoints answer."""

    programs: str | int = "supported"
    # The status ``POST /programs/{id}/tool`` answers (204 by default, as agentrt's server does).
    tool_route: int = 204
    # Status codes to answer the next LLM calls with before succeeding (retry tests).
    fail_next: list[int] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, module: Any) -> Callable[[Any], Any]:
        def handle(request: Any) -> Any:
            body = json.loads(request.content) if request.content else {}
            seen = Seen(
                request.method,
                request.url.path,
                {k: v for k, v in request.headers.items() if k in h.ALL_HEADERS},
                body,
            )
            with self.lock:
                self.seen.append(seen)
                failure = (
                    self.fail_next.pop(0)
                    if self.fail_next and "/programs" not in seen.path
                    else None
                )
            if "/programs" in seen.path and seen.path.endswith("/tool"):
                return module.Response(self.tool_route)
            if "/programs" in seen.path:
                if self.programs != "supported":
                    return module.Response(int(self.programs), json={"error": {"message": "no"}})
                return module.Response(
                    200, json={"id": body.get("program_id", "x"), "object": "program"}
                )
            if failure is not None:
                return module.Response(
                    failure, json={"error": {"message": "try again", "type": "server_error"}}
                )
            if seen.path.endswith("/chat/completions"):
                if body.get("stream"):
                    return module.Response(
                        200,
                        headers={"content-type": "text/event-stream"},
                        content=chat_chunks(["a", "b", "c"]),
                    )
                return module.Response(200, json=chat_completion("ok:" + seen.prompt))
            if seen.path.endswith("/completions"):
                return module.Response(200, json=text_completion("ok"))
            if seen.path.endswith("/models"):
                return module.Response(
                    200,
                    json={
                        "object": "list",
                        "data": [
                            {"id": "test-model", "object": "model", "created": 1, "owned_by": "t"}
                        ],
                    },
                )
            return module.Response(404, json={"error": {"message": "not found"}})

        return handle

    # -- views ---------------------------------------------------------------------------
    def calls(self) -> list[Seen]:
        """The LLM calls, in arrival order."""
        with self.lock:
            return [s for s in self.seen if h.is_llm_call_path(s.path)]

    def tool_signals(self) -> list[tuple[str, str, str | None]]:
        """(program id, state, tool) of every tool signal, in arrival order."""
        with self.lock:
            return [
                (s.path.rsplit("/", 2)[-2], s.body["state"], s.body.get("tool"))
                for s in self.seen
                if s.path.endswith("/tool")
            ]

    def program_requests(self) -> list[tuple[str, str]]:
        """(method, program id) of every lifecycle request (tool signals aside)."""
        with self.lock:
            out = []
            for s in self.seen:
                if "/programs" in s.path and not s.path.endswith("/tool"):
                    pid = (
                        s.body.get("program_id")
                        if s.method == "POST"
                        else s.path.rsplit("/", 1)[-1]
                    )
                    out.append((s.method, str(pid)))
            return out

    def sync_client(self, base_url: str = BASE_URL, **kwargs: Any) -> agentrt.OpenAI:
        transport = httpx.MockTransport(self.handler(httpx))
        return agentrt.OpenAI(
            base_url=base_url,
            api_key="sk-test",
            max_retries=kwargs.pop("max_retries", 0),
            http_client=httpx.Client(transport=transport),
            **kwargs,
        )

    def async_handler(self, module: Any) -> Callable[[Any], Any]:
        """The handler for async clients: it yields to the event loop once, as network I/O
        would, so that concurrent tasks' calls overlap."""
        handle = self.handler(module)

        async def handle_async(request: Any) -> Any:
            await asyncio.sleep(0)
            return handle(request)

        return handle_async

    def async_client(self, base_url: str = BASE_URL, **kwargs: Any) -> agentrt.AsyncOpenAI:
        transport = httpx.MockTransport(self.async_handler(httpx))
        return agentrt.AsyncOpenAI(
            base_url=base_url,
            api_key="sk-test",
            max_retries=kwargs.pop("max_retries", 0),
            http_client=httpx.AsyncClient(transport=transport),
            **kwargs,
        )


def ask(client: agentrt.OpenAI, text: str = "hi") -> str:
    reply = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""


async def aask(client: agentrt.AsyncOpenAI, text: str = "hi") -> str:
    reply = await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""
