"""``EchoEngine``: a real :class:`EngineClient` that needs no model.

It answers every call with the text of the last message (or the prompt),
word by word, so tests of the server, the router and the SDK can check exact
outputs, and the HTTP-overhead benchmark has a "trivial engine" to measure
against. It honours what a client can observe of a real engine: ``max_tokens``,
stop strings and stop token ids, ``ignore_eos`` (the reply goes round until
``max_tokens``), ``n``, logprobs, the context length (prompts
that do not fit raise :class:`PromptTooLong`), a per-token delay for streaming,
aborts, and a simulated KV pool whose blocks return to zero when calls end.
With ``slots`` it runs at most that many calls and queues the rest first
come, first served, as llama.cpp's server does with its parallel slots.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio

from agentrt.protocol.engine import (
    EngineOverloaded,
    EngineStats,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    ProgramTag,
    PromptTooLong,
    Timings,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)

_PIECES = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into word pieces that keep their leading whitespace (joining them gives the text back)."""
    return _PIECES.findall(text)


def token_id(piece: str) -> int:
    return zlib.crc32(piece.encode()) % 32000


class EchoEngine:
    """Echoes the last message back, one word per token, optionally ``token_delay`` seconds apart.

    ``max_running`` bounds concurrent calls (beyond it ``generate`` raises
    :class:`EngineOverloaded`, as a full engine would); ``block_size`` and
    ``kv_blocks_total`` size the simulated KV pool reported by :meth:`stats`.
    ``slots`` bounds running calls too, but queues the calls beyond it (FIFO)
    instead of refusing them; ``started`` lists call ids in the order they
    got a slot, and ``peak_running`` the most that ran at once.
    Every aborted call id is appended to ``aborted``; started and ended
    programs are kept in ``programs`` so tests can see what the engine was told.
    """

    def __init__(
        self,
        model: str = "echo",
        *,
        max_model_len: int = 4096,
        token_delay: float = 0.0,
        first_token_delay: float = 0.0,
        max_running: int | None = None,
        block_size: int = 16,
        kv_blocks_total: int = 4096,
        slots: int | None = None,
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.max_running = max_running
        self.block_size = block_size
        self.kv_blocks_total = kv_blocks_total
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.programs: dict[str, ProgramTag] = {}
        self.ended_programs: list[str] = []
        self.requests: list[GenerationRequest] = []
        self.slots = slots
        self.started: list[str] = []
        self.peak_running = 0
        self._queue = anyio.CapacityLimiter(slots) if slots is not None else None
        self._queued = 0
        self._blocks: dict[str, int] = {}  # call id -> KV blocks held
        self._abort_requested: set[str] = set()
        self._generated = 0
        self.prompt_tokens = 0  # prompt tokens of every call run (it caches none: all computed)
        self._closed = False

    # ------------------------------------------------------------------ EngineClient

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self._queue is None:
            return self._generate(request)
        return self._in_slot(request)

    async def _in_slot(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Wait for a slot in arrival order, then run the call in it."""
        assert self._queue is not None
        self._queued += 1
        try:
            await self._queue.acquire_on_behalf_of(request.call_id)
        finally:
            self._queued -= 1
        try:
            self.started.append(request.call_id)
            self.peak_running = max(self.peak_running, int(self._queue.borrowed_tokens))
            async with aclosing(self._generate(request)) as events:
                async for event in events:
                    yield event
        finally:
            self._queue.release_on_behalf_of(request.call_id)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        arrival = request.arrival_time or time.monotonic()
        prompt_pieces = tokenize(self._prompt_text(request))
        prompt_len = len(request.prompt) if isinstance(request.prompt, list) else len(prompt_pieces)
        self._check_fits(request, prompt_len)
        if request.call_id in self._blocks:
            raise InvalidRequest(f"call id {request.call_id!r} is already in use")
        if self.max_running is not None and len(self._blocks) >= self.max_running:
            raise EngineOverloaded(f"engine is running {len(self._blocks)} calls, its limit")
        self.requests.append(request)
        call_id = request.call_id
        self._blocks[call_id] = self._blocks_for(prompt_len)
        self.prompt_tokens += prompt_len
        finished = False
        try:
            if self.first_token_delay:
                await anyio.sleep(self.first_token_delay)
            first_token = time.monotonic()
            usage = Usage(prompt_tokens=prompt_len)
            n = request.sampling.n
            for index in range(n):
                async for event in self._choice(
                    request, index, self._reply(request, prompt_pieces), usage
                ):
                    if event.finish_reason is not None and index == n - 1:
                        now = time.monotonic()
                        event.usage = usage
                        event.timings = Timings(
                            arrival=arrival,
                            first_scheduled=arrival,
                            first_token=first_token,
                            finished=now,
                            queue_time=0.0,
                            model_time=now - arrival,
                        )
                    yield event
                    if event.finish_reason == "abort":
                        return
            finished = True
        finally:
            self._blocks.pop(call_id, None)
            self._abort_requested.discard(call_id)
            (self.finished if finished else self.aborted).append(call_id)

    async def abort(self, call_id: str) -> None:
        if call_id in self._blocks:
            self._abort_requested.add(call_id)

    def stats(self) -> EngineStats:
        used = sum(self._blocks.values())
        return EngineStats(
            running=len(self._blocks),
            waiting=self._queued,
            kv_blocks_total=self.kv_blocks_total,
            kv_blocks_used=used,
            kv_usage=used / self.kv_blocks_total,
            generated_tokens=self._generated,
        )

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.model, max_model_len=self.max_model_len)]

    async def start_program(self, tag: ProgramTag) -> None:
        self.programs[tag.program_id] = tag

    async def end_program(self, program_id: str) -> None:
        self.programs.pop(program_id, None)
        self.ended_programs.append(program_id)

    async def close(self) -> None:
        self._closed = True

    # ------------------------------------------------------------------ internals

    def _prompt_text(self, request: GenerationRequest) -> str:
        if request.messages is not None:
            return "".join(
                f"{m.get('role', '')}: {_text(m.get('content'))}\n" for m in request.messages
            )
        if isinstance(request.prompt, str):
            return request.prompt
        return ""

    def _reply(self, request: GenerationRequest, prompt_pieces: list[str]) -> list[str]:
        if request.messages:
            return tokenize(_text(request.messages[-1].get("content")))
        if isinstance(request.prompt, list):
            return [f" t{t}" for t in request.prompt]
        return prompt_pieces

    def _check_fits(self, request: GenerationRequest, prompt_len: int) -> None:
        if prompt_len >= self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens, "
                f"but the prompt has {prompt_len} tokens.",
                param="messages" if request.messages is not None else "prompt",
            )
        wanted = request.sampling.max_tokens
        if wanted is not None and prompt_len + wanted > self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + wanted} tokens ({prompt_len} in the prompt, {wanted} for the completion).",
                param="max_tokens",
            )

    def _blocks_for(self, tokens: int) -> int:
        return math.ceil(max(tokens, 1) / self.block_size)

    async def _choice(
        self, request: GenerationRequest, index: int, reply: list[str], usage: Usage
    ) -> AsyncIterator[TokenEvent]:
        sampling = request.sampling
        limit = sampling.max_tokens if sampling.max_tokens is not None else self.max_model_len
        if sampling.ignore_eos and sampling.max_tokens is not None:
            # The echo's end is its end of sequence: ignoring it, the reply goes round to max_tokens.
            cycle = reply or [" echo"]
            again = [p if p[:1].isspace() else " " + p for p in cycle]  # words, not run together
            reply = [(cycle if i < len(cycle) else again)[i % len(cycle)] for i in range(limit)]
        text = ""
        emitted = 0
        paced_from = time.monotonic()
        for count, piece in enumerate(reply, start=1):
            if request.call_id in self._abort_requested:
                yield TokenEvent(call_id=request.call_id, index=index, finish_reason="abort")
                return
            if self.token_delay:
                # Token k is due k delays after the first: a late wake-up (a busy host) does not
                # lengthen the call, as it would not on an engine whose steps take that long.
                await anyio.sleep(
                    max(0.0, paced_from + count * self.token_delay - time.monotonic())
                )
            tid = token_id(piece)
            usage.completion_tokens += 1
            self._generated += 1
            self._blocks[request.call_id] = self._blocks_for(
                usage.prompt_tokens + usage.completion_tokens
            )
            if tid in sampling.stop_token_ids:
                yield TokenEvent(
                    call_id=request.call_id, index=index, finish_reason="stop", stop_reason=tid
                )
                return
            text += piece
            stop = next((s for s in sampling.stop if s in text), None)
            if stop is not None:
                cut = text.index(stop)
                yield TokenEvent(
                    call_id=request.call_id,
                    index=index,
                    token_ids=[tid],
                    text=text[emitted:cut] if cut > emitted else "",
                    finish_reason="stop",
                    stop_reason=stop,
                )
                return
            last = count == len(reply) or count >= limit
            yield TokenEvent(
                call_id=request.call_id,
                index=index,
                token_ids=[tid],
                text=text[emitted:],
                logprobs=_logprobs(tid, piece, sampling.top_logprobs)
                if sampling.logprobs
                else None,
                finish_reason=None
                if not last
                else (
                    "length"
                    if count >= limit and (count < len(reply) or sampling.ignore_eos)
                    else "stop"
                ),
            )
            emitted = len(text)
            if last:
                return
        yield TokenEvent(call_id=request.call_id, index=index, finish_reason="stop")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _logprobs(tid: int, piece: str, top: int) -> list[TokenLogprob]:
    alternatives = [TopLogprob(token_id=tid, token=piece, logprob=-0.25)]
    alternatives += [
        TopLogprob(token_id=(tid + k) % 32000, token=f"<{k}>", logprob=-1.0 - k)
        for k in range(1, top)
    ]
    return [TokenLogprob(token_id=tid, token=piece, logprob=-0.25, top=alternatives[:top])]
