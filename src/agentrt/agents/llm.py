"""The one way the reference agents talk to a model: a streamed chat completion, traced.

Agents stream every call (as interactive agents do) so that the client sees
its first token and the gaps between tokens; the :class:`Trace` keeps those
timings for the benchmark. Any OpenAI-compatible server works: the calls are
plain ``chat.completions.create`` on an ``agentrt.OpenAI`` / ``AsyncOpenAI``
client, which adds the program headers by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import agentrt
from agentrt.agents.trace import CallRecord, Trace


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for (arguments still as the model wrote them)."""

    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True)
class Reply:
    """What one call returned, assembled from the stream."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    completion_tokens: int


class IncompleteReply(RuntimeError):
    """The server ended a streamed reply without a finish reason: the reply was cut off.

    Some servers close a stream early (llama-cpp-python's server, for one,
    drops a running stream when another request arrives unless started with
    ``--interrupt_requests False``). Counting such a call as done would make
    a benchmark report work that never happened, so it is an error.
    """


@dataclass
class _Assembler:
    """Folds stream chunks into a :class:`Reply` while timing them into a :class:`CallRecord`."""

    record: CallRecord
    text: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, str]] = field(default_factory=dict)
    chunks_with_text: int = 0
    last_token: float | None = None

    def add(self, chunk: Any) -> None:
        now = time.monotonic()
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.record.prompt_tokens = usage.prompt_tokens or 0
            self.record.completion_tokens = usage.completion_tokens or 0
        server = (getattr(chunk, "model_extra", None) or {}).get("agentrt")
        if isinstance(server, dict):
            self.record.call_id = server.get("call_id")
            self.record.server_queue_time = server.get("queue_time")
            self.record.server_model_time = server.get("model_time")
        for choice in chunk.choices or []:
            delta = choice.delta
            produced = False
            if delta is not None and delta.content:
                self.text.append(delta.content)
                produced = True
            for tc in (delta.tool_calls or []) if delta is not None else []:
                slot = self.tools.setdefault(tc.index or 0, {"id": "", "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function is not None:
                    slot["name"] += tc.function.name or ""
                    slot["arguments"] += tc.function.arguments or ""
                produced = True
            if produced:
                self._tick(now)
            if choice.finish_reason is not None:
                self.record.finish_reason = choice.finish_reason

    def _tick(self, now: float) -> None:
        self.chunks_with_text += 1
        if self.record.first_token is None:
            self.record.first_token = now
        elif self.last_token is not None:
            self.record.inter_token.append(now - self.last_token)
        self.last_token = now

    def finish(self) -> Reply:
        self.record.end = time.monotonic()
        if self.record.finish_reason is None:
            error = IncompleteReply(f"the stream of {self.record.call_id or 'a call'} ended without a finish reason")
            self.record.error = f"{type(error).__name__}: {error}"
            raise error
        if self.record.completion_tokens == 0:
            # The server sent no usage: one streamed chunk is one token on every server we know.
            self.record.completion_tokens = self.chunks_with_text
        calls = [
            ToolCall(name=t["name"], arguments=t["arguments"], id=t["id"])
            for _, t in sorted(self.tools.items())
            if t["name"]
        ]
        return Reply(
            text="".join(self.text),
            tool_calls=calls,
            finish_reason=self.record.finish_reason,
            completion_tokens=self.record.completion_tokens,
        )


def _new_record() -> CallRecord:
    """A record for a call about to be sent, placed in the program's DAG by the SDK's context."""
    context = agentrt.current_program()
    return CallRecord(
        start=time.monotonic(),
        thread_id=context.thread_id if context else None,
        parent_call_id=context.parent_call_id if context else None,
    )


@dataclass
class LLM:
    """A model endpoint for agents: sync and async chat calls that record themselves in ``trace``.

    ``extra_body`` goes into every request (e.g. ``{"ignore_eos": True}`` to
    make decode lengths exactly ``max_tokens`` on servers that support it).
    """

    model: str
    client: agentrt.OpenAI | None = None
    aclient: agentrt.AsyncOpenAI | None = None
    trace: Trace = field(default_factory=Trace)
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def _request(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        tools: list[dict[str, Any]] | None,
        temperature: float | None,
        seed: int | None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if seed is not None:
            kwargs["seed"] = seed
        if tools:
            kwargs["tools"] = tools
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        return kwargs

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        tools: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Reply:
        """One blocking chat call (for programs written with threads)."""
        if self.client is None:
            raise RuntimeError("this LLM has no synchronous client; pass client=agentrt.OpenAI(...)")
        record = _new_record()
        self.trace.calls.append(record)
        assembler = _Assembler(record)
        try:
            stream = self.client.chat.completions.create(**self._request(messages, max_tokens, tools, temperature, seed))
            with stream:
                for chunk in stream:
                    assembler.add(chunk)
        except Exception as e:
            record.error = f"{type(e).__name__}: {e}"
            record.end = time.monotonic()
            raise
        return assembler.finish()

    async def achat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        tools: list[dict[str, Any]] | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Reply:
        """One chat call for programs written with asyncio."""
        if self.aclient is None:
            raise RuntimeError("this LLM has no async client; pass aclient=agentrt.AsyncOpenAI(...)")
        record = _new_record()
        self.trace.calls.append(record)
        assembler = _Assembler(record)
        try:
            stream = await self.aclient.chat.completions.create(
                **self._request(messages, max_tokens, tools, temperature, seed)
            )
            async with stream:
                async for chunk in stream:
                    assembler.add(chunk)
        except BaseException as e:
            record.error = f"{type(e).__name__}: {e}"
            record.end = time.monotonic()
            raise
        return assembler.finish()

    def with_trace(self, trace: Trace) -> LLM:
        """The same endpoint recording into another trace (one trace per program run)."""
        return LLM(
            model=self.model,
            client=self.client,
            aclient=self.aclient,
            trace=trace,
            temperature=self.temperature,
            extra_body=self.extra_body,
        )
