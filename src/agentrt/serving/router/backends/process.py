"""Embedded engine replicas in worker processes (``agentrt serve --replicas N``).

Each :class:`ProcessBackend` spawns one worker (``agentrt.serving.router.backends.worker``)
connected by a socket pair and speaks the msgspec protocol of
:mod:`~agentrt.serving.router.backends.wire` over it. Every call gets its own
in-memory stream fed by one reader task. A worker that dies (crash, OOM
kill, SIGKILL) closes its end of the socket: the reader sees it at once,
every call in flight on it fails with :class:`EngineUnavailable`, and
:meth:`ProcessBackend.run` returns so the router marks the replica dead.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
from anyio.abc import Process, TaskStatus, UNIXSocketStream
from anyio.streams.memory import MemoryObjectSendStream

from agentrt.log import get_logger, logging_env
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
from agentrt.serving.router.backends.errors import EngineLost, engine_error
from agentrt.serving.router.backends.hosting import EngineSpec
from agentrt.serving.router.backends.wire import (
    Abort,
    Channel,
    EndProgram,
    Event,
    Failed,
    Finished,
    FrameError,
    Generate,
    Init,
    InitFailed,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartProgram,
    ToolSignal,
    ToRouter,
)

log = get_logger("agentrt.serving.process")
_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)
_CallItem = TokenEvent | EngineError


class ProcessBackend:
    """One engine replica in its own worker process; an :class:`EngineClient` for the router."""

    program_aware = True  # the worker's engine runs the program-aware scheduler itself

    def __init__(
        self,
        engine_id: str,
        engine: EngineSpec,
        *,
        start_timeout: float = 600.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.engine_id = engine_id
        self.spec = engine
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.pid: int | None = None
        self._channel: Channel | None = None
        self._down_reason = "not started"
        self._calls: dict[str, MemoryObjectSendStream[_CallItem]] = {}
        self._pongs: dict[int, anyio.Event] = {}
        self._ping_seq = itertools.count()
        self._stats = EngineStats()
        self._models: list[ModelInfo] = []
        self._run_scope: anyio.CancelScope | None = None

    # -- lifecycle ---------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Spawn the worker, report started once its engine is ready, serve until it exits or we are cancelled."""
        with anyio.CancelScope() as self._run_scope:
            parent, child = socket.socketpair()
            try:
                process = await anyio.open_process(
                    [
                        sys.executable,
                        "-m",
                        "agentrt.serving.router.backends.worker",
                        str(child.fileno()),
                    ],
                    pass_fds=[child.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=None,
                    stderr=None,
                    start_new_session=True,  # Ctrl-C reaches the router, which shuts workers down
                    env={**os.environ, **logging_env()},
                )
            finally:
                child.close()
            channel = Channel(await UNIXSocketStream.from_socket(parent), ToRouter)
            reason = "worker stopped"
            try:
                failure = await self._serve(channel, process, task_status)
                reason = await self._exit_reason(process)
                if failure is not None:
                    raise EngineLost(f"replica {self.engine_id} failed to start: {failure}")
                raise EngineLost(f"replica {self.engine_id} lost: {reason}")
            finally:
                self._go_down(reason)
                with anyio.CancelScope(shield=True):
                    await self._stop(process, channel)

    async def _serve(
        self, channel: Channel, process: Process, task_status: TaskStatus[None]
    ) -> str | None:
        """Handshake, then deliver messages until the worker goes; returns why it could not start, if so."""
        async with anyio.create_task_group() as io:
            io.start_soon(channel.write_loop)
            try:
                await self._handshake(channel, process)
            except _GONE:
                io.cancel_scope.cancel()
                return await self._exit_reason(process)
            except (EngineUnavailable, TimeoutError) as e:
                io.cancel_scope.cancel()
                return str(e) or f"no answer within {self.start_timeout:g}s"
            task_status.started()
            await self._read(channel)
            io.cancel_scope.cancel()
        return None

    async def _handshake(self, channel: Channel, process: Process) -> None:
        await channel.send(Init(engine=self.spec))
        with anyio.fail_after(self.start_timeout):
            reply = await channel.receive()
        if isinstance(reply, InitFailed):
            raise EngineLost(reply.error.message)
        if not isinstance(reply, Ready):
            raise EngineLost(f"the worker sent {type(reply).__name__} before Ready")
        self._channel = channel
        self._models = reply.models
        self.pid = reply.pid
        self._down_reason = ""
        log.info("replica_up", engine_id=self.engine_id, pid=reply.pid)

    async def _read(self, channel: Channel) -> None:
        """Deliver the worker's messages to the calls they belong to, until the socket closes."""
        try:
            while True:
                message = await channel.receive()
                match message:
                    case Event(event=event):
                        stream = self._calls.get(event.call_id)
                        if stream is not None:
                            stream.send_nowait(event)
                    case Failed(call_id=call_id, error=error):
                        stream = self._calls.pop(call_id, None)
                        if stream is not None:
                            stream.send_nowait(engine_error(error))
                            stream.close()
                    case Finished(call_id=call_id):
                        stream = self._calls.pop(call_id, None)
                        if stream is not None:
                            stream.close()
                    case Pong(seq=seq, stats=stats):
                        self._stats = stats
                        waiter = self._pongs.pop(seq, None)
                        if waiter is not None:
                            waiter.set()
                    case _:
                        log.warning(
                            "unexpected_message",
                            engine_id=self.engine_id,
                            kind=type(message).__name__,
                        )
        except (*_GONE, FrameError):
            return

    async def _exit_reason(self, process: Process) -> str:
        with anyio.move_on_after(1.0):
            await process.wait()
        code = process.returncode
        if code is None:
            return "worker closed its connection"
        if code < 0:
            return f"worker (pid {process.pid}) killed by {signal.Signals(-code).name}"
        return f"worker (pid {process.pid}) exited with status {code}"

    def _go_down(self, reason: str) -> None:
        """Fail every call in flight on this replica and refuse new ones."""
        self._channel = None
        self._down_reason = reason
        calls, self._calls = self._calls, {}
        for stream in calls.values():
            stream.send_nowait(EngineLost(f"engine {self.engine_id} is unavailable: {reason}"))
            stream.close()
        pongs, self._pongs = self._pongs, {}
        for waiter in pongs.values():
            waiter.set()

    async def _stop(self, process: Process, channel: Channel) -> None:
        if process.returncode is None:
            # The polite Shutdown is bounded too: a frozen worker whose socket is full never reads it.
            with anyio.move_on_after(self.shutdown_timeout):
                with contextlib.suppress(*_GONE, OSError):
                    await channel.send_now(Shutdown())
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await channel.aclose()
        await process.aclose()

    async def close(self) -> None:
        """Shut the worker down (``run`` returns)."""
        if self._run_scope is not None:
            self._run_scope.cancel()

    # -- EngineClient ------------------------------------------------------

    def _live_channel(self) -> Channel:
        if self._channel is None:
            raise EngineLost(f"engine {self.engine_id} is unavailable: {self._down_reason}")
        return self._channel

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        channel = self._live_channel()
        if request.call_id in self._calls:
            raise InvalidRequest(f"call {request.call_id!r} is already running", param="call_id")
        send, receive = anyio.create_memory_object_stream[_CallItem](math.inf)
        self._calls[request.call_id] = send
        done = False
        try:
            try:
                await channel.send(Generate(request=request))
            except _GONE:
                raise EngineLost(
                    f"engine {self.engine_id} is unavailable: connection lost"
                ) from None
            async with receive:
                async for item in receive:
                    if isinstance(item, EngineError):
                        done = True
                        raise item
                    yield item
            done = True
        finally:
            self._calls.pop(request.call_id, None)
            if not done and self._channel is channel:
                with anyio.CancelScope(shield=True):
                    await self._send_quietly(channel, Abort(call_id=request.call_id))

    async def _send_quietly(
        self, channel: Channel, message: Abort | EndProgram | ToolSignal
    ) -> None:
        with contextlib.suppress(*_GONE):  # the reader notices the worker is gone
            await channel.send(message)

    async def abort(self, call_id: str) -> None:
        if self._channel is not None and call_id in self._calls:
            await self._send_quietly(self._channel, Abort(call_id=call_id))

    async def check_health(self) -> None:
        """Round-trip a ping through the worker's event loop (refreshes :meth:`stats`)."""
        channel = self._live_channel()
        seq = next(self._ping_seq)
        waiter = self._pongs[seq] = anyio.Event()
        try:
            await channel.send(Ping(seq=seq))
        except _GONE:
            raise EngineLost(f"engine {self.engine_id} is unavailable: connection lost") from None
        try:
            await waiter.wait()
        finally:
            self._pongs.pop(seq, None)
        self._live_channel()  # woken by the worker going down rather than by its Pong

    def stats(self) -> EngineStats:
        return self._stats

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    async def start_program(self, tag: ProgramTag) -> None:
        try:
            await self._live_channel().send(StartProgram(tag=tag))
        except _GONE:
            raise EngineLost(f"engine {self.engine_id} is unavailable: connection lost") from None

    async def end_program(self, program_id: str) -> None:
        if self._channel is not None:
            await self._send_quietly(self._channel, EndProgram(program_id=program_id))

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """A tool signal for the worker's engine, queued in order with the program's calls."""
        if self._channel is not None:
            await self._send_quietly(self._channel, ToolSignal(program_id=program_id, event=event))
