"""``/v1/chat/completions``: one engine call, answered as one JSON body or as OpenAI's SSE chunks."""

from __future__ import annotations

import time

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
    encoder,
)
from agentrt.serving.http.calls import CallTracker, run_call
from agentrt.serving.http.exchange import Channel
from agentrt.serving.http.generation import Generation, usage_info
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


async def answer_chat(
    gen: Generation, channel: Channel, tool_names: set[str], stream: bool
) -> None:
    tracker = gen.trackers[0]
    if stream:
        await _stream(gen, channel, tracker, tool_names)
        return
    choices: dict[int, _Choice] = {}

    async def collect(event: TokenEvent) -> None:
        choices.setdefault(event.index, _Choice()).add(event)

    await run_call(gen.engine, tracker, collect)
    gen.finished(tracker)
    out: list[ChatChoice] = []
    for index in sorted(choices):
        c = choices[index]
        content: str | None = "".join(c.text)
        calls: list[ToolCall] = []
        finish = c.finish_reason
        if tool_names and content:
            content, calls = parse_tool_calls(content, tool_names)
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
    body = ChatCompletion(
        id=gen.response_id,
        created=gen.created,
        model=gen.model,
        choices=out,
        usage=usage_info(gen.trackers),
        agentrt=tracker.info(gen.program_id),
    )
    await channel.json(200, encoder.encode(body), gen.headers(tracker))


async def _stream(
    gen: Generation, channel: Channel, tracker: CallTracker, tool_names: set[str]
) -> None:
    include_usage = gen.include_usage
    started: set[int] = set()
    tool_streams: dict[int, ToolCallStream] = {}

    def chunk(choices: list[ChatChunkChoice]) -> ChatCompletionChunk:
        c = ChatCompletionChunk(
            id=gen.response_id, created=gen.created, model=gen.model, choices=choices
        )
        if include_usage:
            c.usage = None
        return c

    async def forward(event: TokenEvent) -> None:
        if not channel.started:
            await channel.open_stream(gen.headers(None))
        i = event.index
        if i not in started:
            started.add(i)
            await channel.event(
                encoder.encode(
                    chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
                )
            )
        text = event.text
        tools = None
        if tool_names:
            ts = tool_streams.setdefault(i, ToolCallStream(tool_names))
            text = ts.feed(text)
        if text or event.logprobs:
            await channel.event(
                encoder.encode(
                    chunk(
                        [
                            ChatChunkChoice(
                                index=i,
                                delta=ChatDelta(content=text or None),
                                logprobs=chat_logprobs(event.logprobs),
                            )
                        ]
                    )
                )
            )
        if event.finish_reason is None:
            return
        finish: str = event.finish_reason
        if tool_names:
            tail, calls = tool_streams[i].finish()
            if tail:
                await channel.event(
                    encoder.encode(chunk([ChatChunkChoice(index=i, delta=ChatDelta(content=tail))]))
                )
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
                await channel.event(
                    encoder.encode(
                        chunk([ChatChunkChoice(index=i, delta=ChatDelta(tool_calls=tools))])
                    )
                )
                finish = "tool_calls"
        last = chunk([ChatChunkChoice(index=i, delta=ChatDelta(), finish_reason=finish)])
        if event.timings is not None and not include_usage:
            tracker.finished = time.monotonic()
            last.agentrt = tracker.info(gen.program_id)
        await channel.event(encoder.encode(last))

    await gen.stream_errors(channel, run_call(gen.engine, tracker, forward))
    if channel.finished:
        return
    if not channel.started:
        await channel.open_stream(gen.headers(None))
    gen.finished(tracker)
    if include_usage:
        final = ChatCompletionChunk(
            id=gen.response_id,
            created=gen.created,
            model=gen.model,
            choices=[],
            usage=usage_info(gen.trackers),
        )
        final.agentrt = tracker.info(gen.program_id)
        await channel.event(encoder.encode(final))
    await channel.close_stream()
