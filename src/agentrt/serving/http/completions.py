"""``/v1/completions``: one engine call per prompt, run side by side, answered as JSON or SSE chunks.

Choice ``k`` of prompt ``p`` is choice ``p * n + k`` of the answer, as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from agentrt.protocol.engine import TokenEvent, TokenLogprob
from agentrt.protocol.openai import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    encoder,
)
from agentrt.serving.http.calls import CallTracker, run_call
from agentrt.serving.http.exchange import Channel
from agentrt.serving.http.generation import Generation, usage_info


def completion_logprobs(
    entries: list[TokenLogprob] | None, offset: int
) -> CompletionLogprobs | None:
    if entries is None:
        return None
    out = CompletionLogprobs()
    for e in entries:
        out.tokens.append(e.token)
        out.token_logprobs.append(e.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in e.top} if e.top else None)
        out.text_offset.append(offset)
        offset += len(e.token)
    return out


class _Choice:
    def __init__(self, prefix: str) -> None:
        self.text: list[str] = [prefix]
        self.logprobs: list[TokenLogprob] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None


async def answer_completion(
    gen: Generation, channel: Channel, stream: bool, echo_prompts: list[str] | None
) -> None:
    n = gen.trackers[0].request.sampling.n
    if stream:
        await _stream(gen, channel, n, echo_prompts)
        return
    choices: dict[int, _Choice] = {}

    async def one(p: int, tracker: CallTracker) -> None:
        async def collect(event: TokenEvent) -> None:
            prefix = echo_prompts[p] if echo_prompts else ""
            c = choices.setdefault(p * n + event.index, _Choice(prefix))
            c.text.append(event.text)
            if event.logprobs is not None:
                c.logprobs = (c.logprobs or []) + event.logprobs
            if event.finish_reason is not None:
                c.finish_reason, c.stop_reason = event.finish_reason, event.stop_reason

        await run_call(gen.engine, tracker, collect)
        gen.finished(tracker)

    await _each(gen, one)
    out = [
        CompletionChoice(
            index=i,
            text="".join(c.text),
            finish_reason=c.finish_reason,
            logprobs=completion_logprobs(c.logprobs, len(c.text[0])),
            stop_reason=c.stop_reason,
        )
        for i, c in sorted(choices.items())
    ]
    body = Completion(
        id=gen.response_id,
        created=gen.created,
        model=gen.model,
        choices=out,
        usage=usage_info(gen.trackers),
        agentrt=gen.trackers[0].info(gen.program_id),
    )
    await channel.json(200, encoder.encode(body), gen.headers(gen.trackers[0]))


async def _each(
    gen: Generation, run: Callable[[int, CallTracker], Coroutine[Any, Any, None]]
) -> None:
    """Run one coroutine per call of the request side by side; the first error cancels the rest."""
    if len(gen.trackers) == 1:
        await run(0, gen.trackers[0])
        return
    try:
        async with anyio.create_task_group() as tg:
            for p, tracker in enumerate(gen.trackers):
                tg.start_soon(run, p, tracker)
    except BaseExceptionGroup as group:
        # Surface one error as the request's error (all calls were aborted by their own cleanup).
        raise _first_leaf(group) from None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _stream(
    gen: Generation, channel: Channel, n: int, echo_prompts: list[str] | None
) -> None:
    include_usage = gen.include_usage
    lock = anyio.Lock()
    echoed: set[int] = set()

    def chunk(choice: CompletionChoice) -> CompletionChunk:
        c = CompletionChunk(
            id=gen.response_id, created=gen.created, model=gen.model, choices=[choice]
        )
        if include_usage:
            c.usage = None
        return c

    async def one(p: int, tracker: CallTracker) -> None:
        async def forward(event: TokenEvent) -> None:
            index = p * n + event.index
            text = event.text
            if echo_prompts and index not in echoed:
                echoed.add(index)
                text = echo_prompts[p] + text
            async with lock:
                if not channel.started:
                    await channel.open_stream(gen.headers(None))
                if text or event.logprobs or event.finish_reason is not None:
                    await channel.event(
                        encoder.encode(
                            chunk(
                                CompletionChoice(
                                    index=index,
                                    text=text,
                                    finish_reason=event.finish_reason,
                                    logprobs=completion_logprobs(event.logprobs, 0),
                                    stop_reason=event.stop_reason,
                                )
                            )
                        )
                    )

        await run_call(gen.engine, tracker, forward)
        gen.finished(tracker)

    await gen.stream_errors(channel, _each(gen, one))
    if channel.finished:
        return
    if not channel.started:
        await channel.open_stream(gen.headers(None))
    if include_usage:
        final = CompletionChunk(
            id=gen.response_id,
            created=gen.created,
            model=gen.model,
            choices=[],
            usage=usage_info(gen.trackers),
        )
        final.agentrt = gen.trackers[0].info(gen.program_id)
        await channel.event(encoder.encode(final))
    await channel.close_stream()
