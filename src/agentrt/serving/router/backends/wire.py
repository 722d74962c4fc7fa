"""The router <-> worker-process protocol: msgspec structs, length-prefixed msgpack frames.

One connected stream socket per worker carries every call: requests and
control messages one way, token events and replies the other, each tagged
with the call id. Frames are a 4-byte big-endian length followed by a
msgpack-encoded tagged union, so both sides decode into typed structs once,
at the edge.
"""

from __future__ import annotations

import struct
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from agentrt.protocol.engine import (
    EngineStats,
    GenerationRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
)
from agentrt.protocol.programs import ToolEvent
from agentrt.serving.router.backends.errors import ErrorInfo
from agentrt.serving.router.backends.hosting import EngineSpec

MAX_FRAME = 64 * 1024 * 1024  # a request with a huge prompt still fits; garbage does not
_HEADER = struct.Struct(">I")


# Router -> worker
class Init(msgspec.Struct, tag=True, kw_only=True):
    engine: EngineSpec


class Generate(msgspec.Struct, tag=True, kw_only=True):
    request: GenerationRequest


class Abort(msgspec.Struct, tag=True, kw_only=True):
    call_id: str


class StartProgram(msgspec.Struct, tag=True, kw_only=True):
    tag: ProgramTag


class EndProgram(msgspec.Struct, tag=True, kw_only=True):
    program_id: str


class ToolSignal(msgspec.Struct, tag=True, kw_only=True):
    program_id: str
    event: ToolEvent


class Ping(msgspec.Struct, tag=True, kw_only=True):
    seq: int


class Shutdown(msgspec.Struct, tag=True, kw_only=True):
    pass


# Worker -> router
class Ready(msgspec.Struct, tag=True, kw_only=True):
    models: list[ModelInfo]
    pid: int


class InitFailed(msgspec.Struct, tag=True, kw_only=True):
    error: ErrorInfo


class Event(msgspec.Struct, tag=True, kw_only=True):
    event: TokenEvent


class Failed(msgspec.Struct, tag=True, kw_only=True):
    call_id: str
    error: ErrorInfo


class Finished(msgspec.Struct, tag=True, kw_only=True):
    call_id: str


class Pong(msgspec.Struct, tag=True, kw_only=True):
    seq: int
    stats: EngineStats


ToWorker = Init | Generate | Abort | StartProgram | EndProgram | ToolSignal | Ping | Shutdown
ToRouter = Ready | InitFailed | Event | Failed | Finished | Pong


class FrameError(Exception):
    """The peer sent something that is not a valid frame."""


class Channel:
    """Typed, framed messages over one byte stream.

    ``send`` queues the frame and returns: a single :meth:`write_loop` task
    (which the owner runs) writes everything queued in one socket write, so
    a batch of token events from one engine step costs one syscall, and a
    call's task never waits on the socket unless the queue is over
    ``max_buffer`` bytes (backpressure).
    """

    def __init__(self, stream: ByteStream, incoming: Any, *, max_buffer: int = 1 << 20) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[object] = msgspec.msgpack.Decoder(incoming)
        self._max_buffer = max_buffer
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._wakeup = anyio.Event()
        self._drained = anyio.Event()
        self._broken: BaseException | None = None

    def _frame(self, message: msgspec.Struct) -> bytes:
        payload = self._encoder.encode(message)
        return _HEADER.pack(len(payload)) + payload

    async def send(self, message: msgspec.Struct) -> None:
        """Queue ``message``; raises ``anyio.BrokenResourceError`` once the stream has failed."""
        if self._broken is not None:
            raise anyio.BrokenResourceError from self._broken
        frame = self._frame(message)
        self._queued.append(frame)
        self._queued_bytes += len(frame)
        self._wakeup.set()
        if self._queued_bytes > self._max_buffer:
            await self._drained.wait()
            if self._broken is not None:  # woken because the writer stopped, not because it wrote
                raise anyio.BrokenResourceError from self._broken

    async def send_now(self, message: msgspec.Struct) -> None:
        """Write ``message`` directly, bypassing the queue (a last word when the writer is stopping)."""
        await self._stream.send(self._frame(message))

    async def write_loop(self) -> None:
        """Write queued frames until the stream fails or the loop is cancelled.

        Then every later ``send`` raises, and so do the senders waiting for
        room: a peer that stopped reading (a frozen worker) must not leave
        them waiting forever once its channel is given up.
        """
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                while self._queued:
                    data = b"".join(self._queued)
                    self._queued.clear()
                    self._queued_bytes = 0
                    self._drained.set()
                    self._drained = anyio.Event()
                    await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            self._broken = e
        finally:
            if self._broken is None:
                self._broken = anyio.ClosedResourceError("the channel's writer stopped")
            self._drained.set()

    async def receive(self) -> object:
        """The next message; raises ``anyio.EndOfStream`` / ``anyio.IncompleteRead`` when the peer is gone."""
        (length,) = _HEADER.unpack(await self._reader.receive_exactly(_HEADER.size))
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
        try:
            return self._decoder.decode(await self._reader.receive_exactly(length))
        except msgspec.DecodeError as e:
            raise FrameError(str(e)) from e

    async def aclose(self) -> None:
        await self._stream.aclose()
