"""``/v1/completions`` rendered: the events of one engine call per prompt as a ``Completion`` or SSE chunks.

Choice ``k`` of prompt ``p`` is choice ``p * n + k`` of the answer, as in OpenAI's API.
"""

from __future__ import annotations

import msgspec

from agentrt.protocol.engine import TokenEvent, TokenLogprob
from agentrt.protocol.openai import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
)
from agentrt.serving.http.render import Renderer, Reply


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


class CompletionRenderer(Renderer):
    """The completion answer of a request's calls, one per prompt; ``echo_prompts`` start their choices."""

    def __init__(self, reply: Reply, echo_prompts: list[str] | None) -> None:
        self.reply = reply
        self.echo_prompts = echo_prompts
        self.n = reply.trackers[0].request.sampling.n
        self._choices: dict[int, _Choice] = {}
        self._echoed: set[int] = set()

    # ------------------------------------------------------------------ one JSON body

    def add(self, call: int, event: TokenEvent) -> None:
        prefix = self.echo_prompts[call] if self.echo_prompts else ""
        c = self._choices.setdefault(call * self.n + event.index, _Choice(prefix))
        c.text.append(event.text)
        if event.logprobs is not None:
            c.logprobs = (c.logprobs or []) + event.logprobs
        if event.finish_reason is not None:
            c.finish_reason, c.stop_reason = event.finish_reason, event.stop_reason

    def body(self) -> Completion:
        out = [
            CompletionChoice(
                index=i,
                text="".join(c.text),
                finish_reason=c.finish_reason,
                logprobs=completion_logprobs(c.logprobs, len(c.text[0])),
                stop_reason=c.stop_reason,
            )
            for i, c in sorted(self._choices.items())
        ]
        return self.reply.whole(Completion, out)

    # ------------------------------------------------------------------ SSE chunks

    def chunks(self, call: int, event: TokenEvent) -> list[msgspec.Struct]:
        index = call * self.n + event.index
        text = event.text
        if self.echo_prompts and index not in self._echoed:
            self._echoed.add(index)
            text = self.echo_prompts[call] + text
        if not (text or event.logprobs or event.finish_reason is not None):
            return []
        choice = CompletionChoice(
            index=index,
            text=text,
            finish_reason=event.finish_reason,
            logprobs=completion_logprobs(event.logprobs, 0),
            stop_reason=event.stop_reason,
        )
        return [self.reply.chunk(CompletionChunk, [choice])]

    def closing(self) -> list[msgspec.Struct]:
        return [self.reply.usage_chunk(CompletionChunk)] if self.reply.include_usage else []
