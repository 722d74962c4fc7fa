"""A replica worker process: hosts one engine and serves the router over an inherited socket.

Started by :class:`~agentrt.serving.router.backends.process.ProcessBackend` as
``python -m agentrt.serving.router.backends.worker FD``. The first message names the
engine to build (:class:`~agentrt.serving.router.backends.wire.Init`); after
``Ready`` every call runs as its own task and streams its token events back.
The worker exits when the router says so or its end of the socket closes,
so a router that dies takes its workers with it; it also exits when its
engine fails for good (a health ping finds it so), so the router replaces it.
"""

from __future__ import annotations

import os
import socket
import sys

import anyio
from anyio.abc import TaskGroup, UNIXSocketStream

from agentrt.log import get_logger
from agentrt.protocol.engine import EngineClient, EngineError, GenerationRequest, ToolSignals
from agentrt.protocol.programs import ToolEvent
from agentrt.serving.router.backends.errors import error_info
from agentrt.serving.router.backends.hosting import hosted_engine
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
    ToWorker,
)

log = get_logger("agentrt.serving.worker")
# The exit status of a worker whose engine failed (the router restarts it).
ENGINE_FAILED = 3
_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class _Calls:
    """The calls running in this worker, each in its own cancel scope so that Abort can stop it."""

    def __init__(self, engine: EngineClient, channel: Channel) -> None:
        self.engine = engine
        self.channel = channel
        self.scopes: dict[str, anyio.CancelScope] = {}

    async def run(self, request: GenerationRequest) -> None:
        with anyio.CancelScope() as scope:
            self.scopes[request.call_id] = scope
            try:
                await self._stream(request)
            except _GONE:
                return  # the router is gone; the dispatcher stops the worker
            except Exception as e:
                if not isinstance(e, anyio.get_cancelled_exc_class()):
                    log.warning("call_failed", call_id=request.call_id, error=repr(e))
                with anyio.CancelScope(shield=True):
                    await self.channel.send(Failed(call_id=request.call_id, error=error_info(e)))
            finally:
                self.scopes.pop(request.call_id, None)

    async def _stream(self, request: GenerationRequest) -> None:
        events = self.engine.generate(request)
        try:
            async for event in events:
                await self.channel.send(Event(event=event))
        finally:
            # Closing the generator is how a call is aborted; do it even when cancelled.
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]
        await self.channel.send(Finished(call_id=request.call_id))

    def abort(self, call_id: str) -> None:
        scope = self.scopes.get(call_id)
        if scope is not None:
            scope.cancel()


async def _dispatch(channel: Channel, engine: EngineClient, tg: TaskGroup) -> str | None:
    """Read the router's messages until it says Shutdown or goes away, or the engine fails.

    Returns why the engine failed (its health check raised), else None. A
    failed engine cannot recover in place: the worker exits, and the router
    replaces it as it replaces a worker that was killed.
    """
    calls = _Calls(engine, channel)
    try:
        while True:
            message: ToWorker = await channel.receive()  # type: ignore[assignment]
            match message:
                case Generate(request=request):
                    tg.start_soon(calls.run, request)
                case Abort(call_id=call_id):
                    calls.abort(call_id)
                case StartProgram(tag=tag):
                    tg.start_soon(engine.start_program, tag)
                case EndProgram(program_id=program_id):
                    tg.start_soon(engine.end_program, program_id)
                case ToolSignal(program_id=program_id, event=event):
                    await _tool_event(engine, program_id, event)
                case Ping(seq=seq):
                    try:
                        stats = engine.stats()
                    except EngineError as e:
                        log.error("engine_failed", error=str(e))
                        return str(e)
                    await channel.send(Pong(seq=seq, stats=stats))
                case Shutdown():
                    return None
                case _:
                    log.warning("unexpected_message", kind=type(message).__name__)
    except (*_GONE, FrameError):
        return None


async def _tool_event(engine: EngineClient, program_id: str, event: ToolEvent) -> None:
    """Hand a tool signal to an engine that listens, before the messages that follow it (the
    program's next call among them); a signal is advisory, so a failure is only logged."""
    if not isinstance(engine, ToolSignals):
        return
    try:
        await engine.tool_event(program_id, event)
    except Exception as e:
        log.warning("tool_event_failed", program_id=program_id, error=repr(e))


async def serve(channel: Channel) -> str | None:
    """Build the engine the router asks for, then serve calls until told to stop.

    Returns why the engine failed, or None when the worker stopped as asked.
    """
    init = await channel.receive()
    if not isinstance(init, Init):
        raise FrameError(f"expected Init, got {type(init).__name__}")
    try:
        async with hosted_engine(init.engine) as engine:
            await channel.send(Ready(models=engine.models(), pid=os.getpid()))
            log.info("worker_ready", factory=init.engine.factory, pid=os.getpid())
            async with anyio.create_task_group() as tg:
                failure = await _dispatch(channel, engine, tg)
                tg.cancel_scope.cancel()
            return failure
    except Exception as e:
        log.exception("worker_failed", factory=init.engine.factory)
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await channel.send_now(InitFailed(error=error_info(e)))
        raise


async def _main(fd: int) -> str | None:
    stream = await UNIXSocketStream.from_socket(socket.socket(fileno=fd))
    channel = Channel(stream, ToWorker)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(channel.write_loop)
            failure = await serve(channel)
            tg.cancel_scope.cancel()
        return failure
    finally:
        await channel.aclose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m agentrt.serving.router.backends.worker FD\n")
        return 2
    failure: str | None = None
    try:
        failure = anyio.run(_main, int(args[0]))
    except* _GONE:
        pass
    return ENGINE_FAILED if failure is not None else 0


if __name__ == "__main__":
    sys.exit(main())
