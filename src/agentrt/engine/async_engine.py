"""The embedded engine behind :class:`agentrt.protocol.engine.EngineClient`.

One worker thread owns the :class:`LLMEngine` and runs its step loop; the
event loop never computes. Everything the loop asks of the engine (add a
call, abort it, start or end a program) travels to the worker as a command
on a queue, and every step's token events travel back in one
``call_soon_threadsafe`` per event loop, so each call's async iterator
receives its tokens as they are produced. Requests are checked before they
are queued, in a worker thread (a chat template and a tokenizer can take tens
of milliseconds over a long prompt), so a bad one raises at the first
``__anext__`` and never reaches the step loop. A call the engine fails on
while it runs ends in an :class:`EngineError` for that call alone; only a
failure of the step itself (the model) stops the engine, and from then on
:meth:`AsyncEngine.stats` raises, so health checks see it.

Every torch operation of the engine runs on that one worker thread, model
loading and compile warm-up included (:meth:`AsyncEngine.start` builds the
engine there). torch's OpenMP runtime keeps a team of threads per thread
that ever ran a parallel region; while a second team lives (say, the
thread that loaded the model), libgomp's threads outnumber the cores of a
small host and it stops spinning between regions, which made each decode
step of the engine thread about twice as slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from agentrt.engine.chat import encode_chat
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import LoadedModel
from agentrt.log import get_logger
from agentrt.protocol.engine import (
    EngineError,
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
)
from agentrt.protocol.programs import ToolEvent

log = get_logger(__name__)


@dataclass
class _Stream:
    """Where one call's events wait for its consumer."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenEvent | EngineError] = field(default_factory=asyncio.Queue)
    done: bool = False


class AsyncEngine:
    """An :class:`EngineClient` that runs an :class:`LLMEngine` in a worker thread.

    Build it with ``await AsyncEngine.start(config)`` (loads the model off the
    event loop), or directly from an existing :class:`LLMEngine`; ``async with``
    it to close it when the block ends. Uses asyncio (the backend the server
    runs on).
    """

    def __init__(
        self, engine: LLMEngine | None = None, *, build: Callable[[], LLMEngine] | None = None
    ) -> None:
        """Step ``engine``, or the engine that ``build()`` makes on the worker thread."""
        if (engine is None) == (build is None):
            raise ValueError("give exactly one of engine and build")
        self.engine: LLMEngine
        self._commands: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._streams: dict[str, _Stream] = {}
        self._closing = False
        self._failure: EngineError | None = None
        if engine is not None:
            self._install(engine)
        self._thread = threading.Thread(
            target=self._run, args=(build,), name="agentrt-engine", daemon=True
        )
        self._thread.start()

    @classmethod
    async def start(
        cls, config: EngineConfig | None = None, loaded: LoadedModel | None = None
    ) -> AsyncEngine:
        """Load the model and build the engine on the worker thread, then start the step loop."""
        engine = cls(build=lambda: LLMEngine(config, loaded))
        await anyio.to_thread.run_sync(engine._ready.wait)
        if engine._build_error is not None:
            raise engine._build_error
        return engine

    def _install(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._stats = engine.stats()
        self._ready.set()

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- EngineClient ---------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the call's events; the last one carries ``usage`` and ``timings``."""
        if self._failure is not None:
            raise self._failure
        prompt_ids = await anyio.to_thread.run_sync(self._checked_prompt_ids, request)
        call_id = request.call_id
        if call_id in self._streams:
            raise InvalidRequest(f"call id {call_id!r} is already in use")
        stream = _Stream(asyncio.get_running_loop())
        self._streams[call_id] = stream
        self._submit(lambda: self._add(request, prompt_ids))
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, EngineError):
                    stream.done = True
                    raise item
                if item.usage is not None:
                    stream.done = True
                yield item
                if stream.done:
                    return
        finally:
            self._streams.pop(call_id, None)
            if not stream.done and not self._closing:
                self._submit(lambda: self.engine.abort_request(call_id))

    async def abort(self, call_id: str) -> None:
        """Abort a call; its consumer receives ``finish_reason="abort"`` events and the usage."""
        self._submit(lambda: self._deliver(self.engine.abort_request(call_id)))

    def stats(self) -> EngineStats:
        """The engine's load; raises :class:`EngineUnavailable` once the step loop has failed.

        That is how ``/health`` and the router's health check learn that this
        engine is gone for good.
        """
        if self._failure is not None:
            raise self._failure
        return self._stats

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.engine.loaded.name, max_model_len=self.engine.max_model_len)]

    async def start_program(self, tag: ProgramTag) -> None:
        self._submit(lambda: self.engine.start_program(tag.program_id))

    async def end_program(self, program_id: str) -> None:
        self._submit(lambda: self.engine.end_program(program_id))

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """A tool signal from the SDK (see :class:`agentrt.protocol.engine.ToolSignals`)."""
        if event.state == "start":
            self._submit(lambda: self.engine.tool_started(program_id, event.tool))
        else:
            self._submit(lambda: self.engine.tool_ended(program_id))

    async def close(self) -> None:
        """Stop the step loop; calls still in flight end with :class:`EngineUnavailable`."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        await anyio.to_thread.run_sync(self._thread.join)
        self._fail_all(EngineUnavailable("the engine was shut down"))
        await anyio.to_thread.run_sync(self.engine.close)

    # --- caller side ----------------------------------------------------------
    def _checked_prompt_ids(self, request: GenerationRequest) -> list[int]:
        prompt_ids = self._prompt_ids(request)
        self.engine.check_request(prompt_ids, request.sampling)
        return prompt_ids

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer = self.engine.tokenizer
        if (request.prompt is None) == (request.messages is None):
            raise InvalidRequest("exactly one of prompt or messages must be given", param="prompt")
        if isinstance(request.prompt, list):
            return request.prompt
        if tokenizer is None:
            raise InvalidRequest("this engine has no tokenizer: send token ids", param="prompt")
        if request.messages is not None:
            return encode_chat(tokenizer, request.messages, request.tools)
        ids: list[int] = tokenizer.encode(request.prompt)
        return ids

    def _submit(self, command: Callable[[], Any]) -> None:
        if self._closing:
            raise EngineUnavailable("the engine was shut down")
        with self._lock:
            self._commands.append(command)
        self._wakeup.set()

    # --- worker side ----------------------------------------------------------
    def _add(self, request: GenerationRequest, prompt_ids: list[int]) -> None:
        if request.call_id not in self._streams:
            return  # the consumer left before the call reached the engine
        try:
            self.engine.add_request(
                request.call_id,
                prompt_ids,
                request.sampling,
                program=request.program,
                priority=request.priority,
                arrival=request.arrival_time,
            )
        except EngineError as e:
            self._deliver_error(request.call_id, e)
        except Exception:  # add_request changes nothing when it raises: only this call is lost
            log.exception("add_request_failed", call=request.call_id)
            self._deliver_error(request.call_id, _call_failed())

    def _run(self, build: Callable[[], LLMEngine] | None) -> None:
        if build is not None:
            try:
                engine = build()
            except BaseException as e:  # handed to start(), which raises it in the caller
                self._build_error = e
                self._ready.set()
                return
            self._install(engine)
        try:
            self._loop()
        except Exception as e:  # the model (or the engine's own state) failed: nothing can go on
            log.exception("engine_step_failed")
            self._failure = EngineUnavailable(f"the engine failed: {e}")
            self._closing = True
            self._fail_all(self._failure)

    def _loop(self) -> None:
        engine = self.engine
        while not self._closing:
            self._drain_commands()
            if not engine.has_unfinished_requests():
                self._stats = engine.stats()
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            events = engine.step()
            self._stats = engine.stats()
            if events:
                self._deliver(events)

    def _drain_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            command()

    def _deliver(self, events: list[TokenEvent]) -> None:
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[_Stream, TokenEvent | EngineError]]
        ] = {}
        for event in events:
            stream = self._streams.get(event.call_id)
            if stream is not None:
                # A call the engine failed on (LLMEngine.step) ends in an error for its consumer.
                item = _call_failed() if event.finish_reason == "error" else event
                by_loop.setdefault(stream.loop, []).append((stream, item))
        for loop, items in by_loop.items():
            _call_soon(loop, _put_all, items)

    def _deliver_error(self, call_id: str, error: EngineError) -> None:
        stream = self._streams.get(call_id)
        if stream is not None:
            _call_soon(stream.loop, stream.queue.put_nowait, error)

    def _fail_all(self, error: EngineError) -> None:
        for call_id in list(self._streams):
            self._deliver_error(call_id, error)


def _call_failed() -> EngineError:
    # The detail is in the engine's log; the client learns only that its call failed.
    return EngineError("the engine failed on this call (internal error); other calls go on")


def _put_all(items: list[tuple[_Stream, TokenEvent | EngineError]]) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    # RuntimeError: that event loop is closed, nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
