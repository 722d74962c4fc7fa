"""Turn a model's text into OpenAI ``tool_calls`` when the request offered tools.

Small instruct models (Hermes, Qwen, SmolLM2) call tools by writing
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or several,
sometimes a JSON list inside one tag), or a bare JSON object / list as their
whole answer. A call counts only if it names one of the offered tools;
anything else stays text. :class:`ToolCallStream` does the same on a stream:
it passes ordinary text through at once and holds back only what may be the
start of a tool call.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from agentrt.protocol.openai import FunctionCall, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
FENCE = "```"


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """Split ``text`` into the content outside tool calls and the calls themselves.

    Returns ``(text, [])`` unchanged when it holds no valid call to an offered tool.
    """
    if OPEN in text:
        calls: list[ToolCall] = []
        outside, blocks = _split_tagged(text)
        for block in blocks:
            parsed = _calls_in(block, tool_names)
            if parsed is None:
                return text, []
            calls += parsed
        if not calls:
            return text, []
        content = "".join(outside).strip()
        return (content or None), calls
    stripped = text.strip()
    parsed = _calls_in(_unfenced(stripped), tool_names)
    if parsed:
        return None, parsed
    return text, []


def _split_tagged(text: str) -> tuple[list[str], list[str]]:
    """The text outside ``<tool_call>...</tool_call>`` blocks, and each block's content, stripped.

    A block without its closing tag runs to the end of the text. One pass of
    ``str.find``: linear in the text, whatever the model wrote (a regex with
    a lazy group between optional whitespace is quadratic on long blank runs).
    """
    outside: list[str] = []
    blocks: list[str] = []
    at = 0
    while (start := text.find(OPEN, at)) >= 0:
        outside.append(text[at:start])
        body = start + len(OPEN)
        end = text.find(CLOSE, body)
        if end < 0:
            blocks.append(text[body:].strip())
            return outside, blocks
        blocks.append(text[body:end].strip())
        at = end + len(CLOSE)
    outside.append(text[at:])
    return outside, blocks


def _unfenced(text: str) -> str:
    """The inside of a Markdown code fence (optionally tagged ``json``) that is the whole text, else the text."""
    if len(text) < 2 * len(FENCE) or not (text.startswith(FENCE) and text.endswith(FENCE)):
        return text
    inner = text[len(FENCE) : -len(FENCE)]
    return inner.removeprefix("json").strip()


def _calls_in(document: str, tool_names: set[str]) -> list[ToolCall] | None:
    """The calls one JSON document describes, or None if it is not a list of valid calls."""
    try:
        value = msgspec.json.decode(document)
    except (msgspec.DecodeError, RecursionError):  # a model can emit "[[[[..." past the stack depth
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item, tool_names) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _call(item: Any, tool_names: set[str]) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    name = item.get("name")
    if not isinstance(name, str) or name not in tool_names:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            msgspec.json.decode(arguments)
        except (msgspec.DecodeError, RecursionError):
            return None
        encoded = arguments
    else:
        encoded = msgspec.json.encode(arguments).decode()
    return ToolCall(id=new_tool_call_id(), function=FunctionCall(name=name, arguments=encoded))


class ToolCallStream:
    """Incremental version of :func:`parse_tool_calls` for one streamed choice.

    :meth:`feed` returns the text that can be sent to the client now;
    :meth:`finish` returns the rest of the text and the parsed calls.
    """

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self._held = ""
        # Inside (or possibly at) a tool call, the text is held until the end, piece by
        # piece: appending to one growing string would copy it once per token.
        self._captured: list[str] = []
        self._sent_any = False
        self._capturing = False

    def feed(self, text: str) -> str:
        if self._capturing:
            self._captured.append(text)
            return ""
        buffer = self._held + text
        if not self._sent_any:
            head = buffer.lstrip()
            if not head:
                self._held = buffer
                return ""
            if head[0] in "{[`":
                # A bare JSON answer may be a tool call: decide at the end.
                self._capturing = True
                self._held = buffer
                return ""
        at = buffer.find(OPEN)
        if at >= 0:
            self._capturing = True
            self._held = buffer[at:]
            return self._send(buffer[:at])
        keep = _partial_open_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return self._send(buffer[: len(buffer) - keep])

    def finish(self) -> tuple[str, list[ToolCall]]:
        held = self._held + "".join(self._captured)
        self._held, self._captured = "", []
        if not held:
            return "", []
        content, calls = parse_tool_calls(held, self.tool_names)
        if calls:
            return content or "", calls
        return held, []

    def _send(self, text: str) -> str:
        if text:
            self._sent_any = True
        return text


def _partial_open_suffix(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0
