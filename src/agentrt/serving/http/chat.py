"""``/v1/chat/completions`` rendered: one engine call's events as a ``ChatCompletion`` or as OpenAI's SSE chunks."""

from __future__ import annotations

import msgspec

from agentrt.protocol.engine import TokenEvent, TokenLogprob
from agentrt.protocol.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobEntry,
    ChatLogprobs,
    ResponseMessage,
    ToolCall,
    ToolCallDelta,
    ToolCallFunctionDelta,
    TopLogprobEntry,
)
from agentrt.serving.http.render import Renderer, Reply
from agentrt.serving.http.toolcalls import ToolCallStream, parse_tool_calls


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if entries is None:
        return None
    return ChatLogprobs(
        content=[
            ChatLogprobEntry(
                token=e.token,
                logprob=e.logprob,
                bytes=list(e.token.encode()),
                top_logprobs=[
                    TopLogprobEntry(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()))
                    for t in e.top
                ],
            )
            for e in entries
        ]
    )


class _Choice:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    def add(self, event: TokenEvent) -> None:
        self.text.append(event.text)
        if event.logprobs is not None:
            self.logprobs = (self.logprobs or []) + event.logprobs
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self.stop_reason = event.stop_reason


class ChatRenderer(Renderer):
    """The chat answer of one engine call; with ``tool_names``, tool calls are parsed out of the text."""

    def __init__(self, reply: Reply, tool_names: set[str]) -> None:
        self.reply = reply
        self.tool_names = tool_names
        self._choices: dict[int, _Choice] = {}
        self._opened: set[int] = set()  # choices whose role chunk has gone out
        self._tool_streams: dict[int, ToolCallStream] = {}

    # ------------------------------------------------------------------ one JSON body

    def add(self, call: int, event: TokenEvent) -> None:
        self._choices.setdefault(event.index, _Choice()).add(event)

    def body(self) -> ChatCompletion:
        out: list[ChatChoice] = []
        for index in sorted(self._choices):
            c = self._choices[index]
            content: str | None = "".join(c.text)
            calls: list[ToolCall] = []
            finish = c.finish_reason
            if self.tool_names and content:
                content, calls = parse_tool_calls(content, self.tool_names)
                if calls:
                    finish = "tool_calls"
            out.append(
                ChatChoice(
                    index=index,
                    message=ResponseMessage(content=content, tool_calls=calls or None),
                    finish_reason=finish,
                    logprobs=chat_logprobs(c.logprobs),
                    stop_reason=c.stop_reason,
                )
            )
        return self.reply.whole(ChatCompletion, out)

    # ------------------------------------------------------------------ SSE chunks

    def chunks(self, call: int, event: TokenEvent) -> list[msgspec.Struct]:
        i = event.index
        out: list[msgspec.Struct] = []
        if i not in self._opened:
            self._opened.add(i)
            out.append(
                self._chunk(ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content="")))
            )
        text = event.text
        if self.tool_names:
            text = self._tool_streams.setdefault(i, ToolCallStream(self.tool_names)).feed(text)
        if text or event.logprobs:
            delta = ChatDelta(content=text or None)
            out.append(
                self._chunk(
                    ChatChunkChoice(index=i, delta=delta, logprobs=chat_logprobs(event.logprobs))
                )
            )
        if event.finish_reason is not None:
            out += self._finish(i, event)
        return out

    def closing(self) -> list[msgspec.Struct]:
        return [self.reply.usage_chunk(ChatCompletionChunk)] if self.reply.include_usage else []

    def _finish(self, i: int, event: TokenEvent) -> list[msgspec.Struct]:
        """The chunks that end choice ``i``: the text and tool calls held back, then the finish reason."""
        out: list[msgspec.Struct] = []
        finish: str = event.finish_reason or ""
        if self.tool_names:
            tail, calls = self._tool_streams[i].finish()
            if tail:
                out.append(self._chunk(ChatChunkChoice(index=i, delta=ChatDelta(content=tail))))
            if calls:
                tools = [
                    ToolCallDelta(
                        index=k,
                        id=call.id,
                        type="function",
                        function=ToolCallFunctionDelta(
                            name=call.function.name, arguments=call.function.arguments
                        ),
                    )
                    for k, call in enumerate(calls)
                ]
                out.append(self._chunk(ChatChunkChoice(index=i, delta=ChatDelta(tool_calls=tools))))
                finish = "tool_calls"
        last = self._chunk(ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=finish))
        if event.timings is not None and not self.reply.include_usage:
            last.agentrt = self.reply.trackers[0].info(self.reply.program_id)
        out.append(last)
        return out

    def _chunk(self, choice: ChatChunkChoice) -> ChatCompletionChunk:
        return self.reply.chunk(ChatCompletionChunk, [choice])
