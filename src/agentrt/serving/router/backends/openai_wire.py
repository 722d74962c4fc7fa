"""Translate between our engine contract and the OpenAI HTTP API that vLLM, SGLang and agentrt speak.

:func:`request_body` turns a :class:`GenerationRequest` into a streaming
``/v1/chat/completions`` or ``/v1/completions`` body; :class:`ChunkDecoder`
turns the SSE chunks that come back into :class:`TokenEvent` s;
:func:`error_from_response` maps an error response onto an
:class:`ErrorInfo` (and so onto our ``EngineError`` types).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

import msgspec

from agentrt.protocol.engine import (
    FinishReason,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from agentrt.serving.router.backends.errors import ErrorInfo

# Sampling fields beyond OpenAI's that vLLM and SGLang accept; sent only when not at their default.
_EXTRAS = ("top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids")
_DEFAULTS = SamplingParams()
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "abort": "abort",
    "error": "error",
    "content_filter": "stop",
}


def endpoint(request: GenerationRequest) -> str:
    return "/v1/chat/completions" if request.messages is not None else "/v1/completions"


def request_body(request: GenerationRequest, model: str, priority: int | None) -> dict[str, Any]:
    """The JSON body of the streaming call that carries ``request`` to an OpenAI-compatible server."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.messages is not None:
        body["messages"] = request.messages
        if request.tools:
            body["tools"] = request.tools
        if s.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = s.top_logprobs
    else:
        body["prompt"] = request.prompt if request.prompt is not None else ""
        if s.logprobs:
            body["logprobs"] = s.top_logprobs
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    body.update(temperature=s.temperature, top_p=s.top_p, n=s.n)
    for name in ("seed", "presence_penalty", "frequency_penalty", *_EXTRAS):
        value = getattr(s, name)
        if value != getattr(_DEFAULTS, name):
            body[name] = value
    if s.stop:
        body["stop"] = s.stop
    if s.logit_bias:
        body["logit_bias"] = {str(token): value for token, value in s.logit_bias.items()}
    if priority is not None:
        body["priority"] = priority
    return body


# -- streamed chunks ----------------------------------------------------------


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Top(msgspec.Struct):
    token: str
    logprob: float


class _ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    top_logprobs: list[_Top] = []


class _Logprobs(msgspec.Struct):
    """Both shapes in one: chat puts entries in ``content``, completions uses the parallel lists."""

    content: list[_ChatTokenLogprob] | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None  # chat
    text: str | None = None  # completions
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string or token that ended the choice
    logprobs: _Logprobs | None = None
    token_ids: list[int] | None = None  # vLLM with return_token_ids


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _ErrorBody(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorBody | None = None


class RemoteStreamError(Exception):
    """The server reported an error inside the stream (after a 200)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class ChunkDecoder:
    """Turns one call's SSE ``data:`` payloads into token events.

    A choice's finishing event is held back until the stream ends, because
    usage arrives in its own chunk after the last choice finishes and the
    contract puts usage on the call's final event.
    """

    def __init__(self, call_id: str, chat: bool) -> None:
        self.call_id = call_id
        self.chat = chat
        self.usage: Usage | None = None
        self._decoder = msgspec.json.Decoder(_Chunk)
        self._finished: list[TokenEvent] = []
        self._tool_calls: dict[int, dict[int, dict[str, str]]] = {}  # choice -> index -> fields

    def feed(self, payload: bytes | str) -> list[TokenEvent]:
        chunk = self._decoder.decode(payload)
        if chunk.error is not None:
            # vLLM and SGLang put the HTTP status the error would have had in its code.
            code = chunk.error.code
            status = code if isinstance(code, int) and 400 <= code < 600 else 500
            raise RemoteStreamError(_info(status, chunk.error))
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
        events: list[TokenEvent] = []
        for choice in chunk.choices:
            text = self._text(choice)
            event = TokenEvent(
                call_id=self.call_id,
                index=choice.index,
                token_ids=choice.token_ids or [],
                text=text,
                logprobs=_logprobs(choice.logprobs),
            )
            if choice.finish_reason is not None:
                event.finish_reason = _FINISH.get(choice.finish_reason, "stop")
                event.stop_reason = choice.stop_reason
                event.text += self._tool_call_text(choice.index)
                self._finished.append(event)
            elif event.text or event.token_ids or event.logprobs:
                events.append(event)
        return events

    def finish(self) -> list[TokenEvent]:
        """The held-back finishing events, usage on the last one."""
        events, self._finished = self._finished, []
        if events:
            events[-1].usage = self.usage or Usage()
        return events

    def _text(self, choice: _Choice) -> str:
        if not self.chat:
            return choice.text or ""
        delta = choice.delta or _Delta()
        for call in delta.tool_calls or []:
            slot = self._tool_calls.setdefault(choice.index, {}).setdefault(
                call.index, {"name": "", "arguments": ""}
            )
            if call.function is not None:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
        return delta.content or ""

    def _tool_call_text(self, index: int) -> str:
        """Structured tool calls rendered the way a model writes them (Hermes ``<tool_call>`` blocks).

        Our engines stream tool calls as text and the app parses them out;
        doing the same here keeps one parser for every backend.
        """
        parts = []
        for slot in self._tool_calls.pop(index, {}).values():
            try:
                arguments: Any = json.loads(slot["arguments"]) if slot["arguments"] else {}
            except json.JSONDecodeError:
                arguments = slot["arguments"]
            call = json.dumps({"name": slot["name"], "arguments": arguments})
            parts.append(f"<tool_call>\n{call}\n</tool_call>")
        return "\n".join(parts)


def _usage(u: _Usage) -> Usage:
    cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0
    return Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=cached
    )


def _logprobs(raw: _Logprobs | None) -> list[TokenLogprob] | None:
    # Token ids do not travel in the OpenAI format: -1 marks them unknown.
    if raw is None:
        return None
    if raw.content:
        return [
            TokenLogprob(
                -1, t.token, t.logprob, [TopLogprob(-1, x.token, x.logprob) for x in t.top_logprobs]
            )
            for t in raw.content
        ]
    if raw.tokens:
        values = raw.token_logprobs or []
        tops = raw.top_logprobs or []
        return [
            TokenLogprob(
                -1,
                token,
                _at(values, i) if _at(values, i) is not None else float("-inf"),
                [TopLogprob(-1, k, v) for k, v in (_at(tops, i) or {}).items()],
            )
            for i, token in enumerate(raw.tokens)
        ]
    return None


def _at(items: list[Any], i: int) -> Any:
    return items[i] if i < len(items) else None


# -- errors -------------------------------------------------------------------


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | None = None
    message: str | None = None  # vLLM's older flat error body
    type: str | None = None
    code: str | int | None = None
    detail: Any = None  # FastAPI's default


def error_from_response(status: int, body: bytes, retry_after: str | None) -> ErrorInfo:
    """Map an error response (any of the shapes OpenAI-compatible servers send) onto :class:`ErrorInfo`."""
    try:
        envelope = msgspec.json.decode(body, type=_ErrorEnvelope)
    except msgspec.DecodeError:
        envelope = _ErrorEnvelope(message=body.decode("utf-8", "replace")[:1000] or None)
    if envelope.error is not None:
        error = envelope.error
    else:
        detail = envelope.detail if isinstance(envelope.detail, str) else None
        error = _ErrorBody(
            message=envelope.message or detail or "", type=envelope.type, code=envelope.code
        )
    info = _info(status, error)
    if retry_after is not None:
        with contextlib.suppress(ValueError):  # an HTTP date: keep our default
            info.retry_after = float(retry_after)
    return info


def _info(status: int, error: _ErrorBody) -> ErrorInfo:
    code = error.code if isinstance(error.code, str) else None
    message = error.message or f"remote engine answered {status}"
    if status == 400 and code is None and "maximum context length" in message:
        code = PromptTooLong.code
    return ErrorInfo(
        status=status,
        message=message,
        type=error.type or _default_type(status),
        code=code,
        param=error.param,
    )


def _default_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "service_unavailable",
    }.get(status, "internal_error")


PriorityOrder = Literal["lower_first", "higher_first", "none"]
