"""In-process mode: the OpenAI clients talk to the app without a socket, and still stream.

httpx's stock ``ASGITransport`` collects the whole body before it returns, so
SSE arrives in one piece at the end. These transports return the response as
soon as the app sends its headers and hand over each body chunk as the app
sends it.

The app always runs on its own event loop in a daemon thread
(:class:`AppRunner`), whichever client calls it: the sync client blocks on
that loop through an anyio blocking portal, the async client awaits it from
its own loop. One loop per app means the engine behind it is bound to one
loop, however many clients (sync, async, several event loops in tests) use
it. The app's lifespan starts on first use and shuts down (closing the
engine) at interpreter exit or on :meth:`AppRunner.close`.

A client that closes a response early (leaves a ``with ... stream=True``
block, breaks out of the iteration) sends ``http.disconnect`` to the app,
which aborts the call: the same as a client hanging up on a real server.

The transports subclass the HTTP library the installed ``openai`` package
uses (``httpx2`` for openai 3.x, ``httpx`` before), so they plug into
``openai.OpenAI(http_client=...)`` and :func:`agentrt.OpenAI` alike.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import importlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, ClassVar, TypeVar

import anyio
import msgspec
import sniffio
from anyio.from_thread import BlockingPortal
from starlette.types import ASGIApp, Message

from agentrt.log import get_logger

log = get_logger("agentrt.inprocess")
T = TypeVar("T")


def _client_http_module() -> Any:
    """The httpx flavour the installed openai client is built on."""
    import openai

    base = next(c for c in openai.DefaultHttpxClient.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


http = _client_http_module()


# ---------------------------------------------------------------------------- one exchange, on the app's loop


class _AppExchange:
    """One request/response with the app, living on the runner's loop."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any], body: bytes) -> None:
        self.app = app
        self.scope = scope
        self.body = body
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = anyio.Event()
        self.done = anyio.Event()
        self.gone = anyio.Event()  # the client closed the response, or the response completed
        self._chunks_in, self._chunks_out = anyio.create_memory_object_stream[bytes](
            max_buffer_size=64
        )
        self._body_sent = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except Exception as e:
            if not self.started.is_set():
                log.error("in-process app failed before responding", exc_info=e)
                self.status = 500
        finally:
            self.started.set()
            self._chunks_in.close()
            self.done.set()

    async def _receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self.started.set()
        elif message["type"] == "http.response.body":
            if self.gone.is_set():
                raise OSError("client disconnected")
            body = message.get("body", b"")
            try:
                if body:
                    await self._chunks_in.send(body)
                if not message.get("more_body", False):
                    self._chunks_in.close()
                    self.gone.set()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                raise OSError("client disconnected") from e

    async def next_chunk(self, read_timeout: float | None) -> bytes | None:
        """The next body chunk, None at the end; ``TimeoutError`` if none comes within ``read_timeout`` seconds."""
        try:
            with anyio.fail_after(read_timeout):
                first = await self._chunks_out.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None
        # Hand over everything already sent in one go: each call is a hop between threads.
        more = [first]
        while True:
            try:
                more.append(self._chunks_out.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return b"".join(more) if len(more) > 1 else first

    async def close(self) -> None:
        """The client is done with the response: tell the app, and wait until it has cleaned up."""
        self.gone.set()
        self._chunks_out.close()
        await self.done.wait()


class _Handoff:
    """Passes the exchange :meth:`AppRunner.open` started to its caller on another thread, or closes it.

    The caller can give up (be cancelled) at any moment, even after ``open``
    returned on the app's loop: the portal then drops the result, and that
    exchange, with nobody to read or close it, would keep its handler blocked
    on a full buffer for ever, holding a server slot. Whichever side comes
    second closes it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exchange: _AppExchange | None = None
        self._abandoned = False

    def deliver(self, exchange: _AppExchange) -> bool:
        """On the app's loop: True if the caller still waits for ``exchange``."""
        with self._lock:
            self._exchange = exchange
            return not self._abandoned

    def abandon(self, portal: BlockingPortal) -> None:
        """On the caller's side, as it gives up: close the exchange if one was delivered."""
        with self._lock:
            self._abandoned = True
            exchange = self._exchange
        if exchange is not None:
            with contextlib.suppress(RuntimeError):  # the app was already shut down
                portal.start_task_soon(exchange.close)


# ---------------------------------------------------------------------------- the app's loop


class AppRunner:
    """Runs one ASGI app (and its lifespan) on a dedicated event loop thread."""

    _runners: ClassVar[dict[int, AppRunner]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._stop: anyio.Event | None = None
        self._thread: threading.Thread | None = None
        self._lifespan_in: Any = None
        self._lifespan_done: anyio.Event | None = None
        self._closed = False
        self._tasks: Any = None

    @classmethod
    def for_app(cls, app: ASGIApp) -> AppRunner:
        """The runner of ``app`` (one per app object, shared by all its transports)."""
        with cls._registry_lock:
            runner = cls._runners.get(id(app))
            if runner is None or runner.app is not app or runner._closed:
                runner = cls._runners[id(app)] = cls(app)
            return runner

    @property
    def portal(self) -> BlockingPortal:
        with self._lock:
            if self._closed:
                raise RuntimeError("the in-process app has been shut down")
            if self._portal is None:
                self._start()
            assert self._portal is not None
            return self._portal

    def started_portal(self) -> BlockingPortal | None:
        """The portal if the app's loop is already running (no locking, no start)."""
        return None if self._closed else self._portal

    def _start(self) -> None:
        ready: Future[BlockingPortal] = Future()

        async def main() -> None:
            self._stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                # The task group owns the lifespan and every exchange; cancelled when the loop stops.
                self._tasks = tg
                async with BlockingPortal() as portal:
                    ready.set_result(portal)
                    await self._stop.wait()
                tg.cancel_scope.cancel()

        def thread_main() -> None:
            try:
                anyio.run(main)
            except BaseException as e:  # surface start failures to the waiting caller
                if not ready.done():
                    ready.set_exception(e)

        # The server's loop belongs to no program: run it in an empty context, not a copy of
        # whichever program happened to make the first request.
        self._thread = threading.Thread(
            target=contextvars.Context().run,
            args=(thread_main,),
            name="agentrt-inprocess",
            daemon=True,
        )
        self._thread.start()
        portal = ready.result()
        try:
            # portal.call copies the caller's context into the task: start the lifespan (and so
            # every engine task it spawns) from an empty one.
            contextvars.Context().run(portal.call, self._startup)
        except BaseException:
            # The app could not start (e.g. the model failed to load): stop its loop; a later
            # request tries again from scratch.
            portal.call(self._stop_loop)
            self._thread.join(timeout=30)
            raise
        self._portal = portal
        atexit.register(self.close)

    async def _stop_loop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def _startup(self) -> None:
        """Run the app's lifespan in a task; return when its startup completed (raise if it failed)."""
        to_app, from_runner = anyio.create_memory_object_stream[Message](max_buffer_size=4)
        started = anyio.Event()
        failure: list[str] = []
        done = anyio.Event()
        self._lifespan_in, self._lifespan_done = to_app, done

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failure.append(str(message.get("message", "")))
            if message["type"].startswith("lifespan.startup."):
                started.set()

        async def lifespan() -> None:
            scope = {
                "type": "lifespan",
                "asgi": {"version": "3.0", "spec_version": "2.0"},
                "state": {},
            }
            try:
                await self.app(scope, from_runner.receive, send)
            except Exception as e:
                failure.append(repr(e))
            finally:
                started.set()
                done.set()

        self._tasks.start_soon(lifespan)
        await to_app.send({"type": "lifespan.startup"})
        await started.wait()
        if failure:
            raise RuntimeError(f"in-process app failed to start: {failure[0]}")

    async def _shutdown(self) -> None:
        if self._lifespan_in is not None and self._lifespan_done is not None:
            await self._lifespan_in.send({"type": "lifespan.shutdown"})
            with anyio.move_on_after(30):
                await self._lifespan_done.wait()

    def close(self) -> None:
        """Shut the app down (lifespan shutdown: the engine closes) and stop its loop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal = self._portal
        with AppRunner._registry_lock:  # forget the app (and its engine) once it is shut down
            if AppRunner._runners.get(id(self.app)) is self:
                del AppRunner._runners[id(self.app)]
        atexit.unregister(self.close)
        if portal is None:
            return
        try:
            portal.call(self._shutdown)
            portal.call(self._stop_loop)
        except RuntimeError:
            pass  # the loop is already gone (interpreter exit)
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def open(
        self, scope: dict[str, Any], body: bytes, read_timeout: float | None, handoff: _Handoff
    ) -> _AppExchange:
        """Start the app on a request (a task of the runner's loop); return once the headers are sent.

        If the headers do not come within ``read_timeout`` seconds (``TimeoutError``),
        or the caller gives up, the app sees the client disconnect, even when the caller
        gives up after this returned (``handoff``).
        """
        exchange = _AppExchange(self.app, scope, body)
        self._tasks.start_soon(exchange.run)
        try:
            with anyio.fail_after(read_timeout):
                await exchange.started.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await exchange.close()
            raise
        if not handoff.deliver(exchange):
            await exchange.close()
        return exchange


def _read_timeout(request: Any) -> float | None:
    timeout = request.extensions.get("timeout", {})
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if value is not None else None


def _scope(request: Any) -> dict[str, Any]:
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": url.path,
        "raw_path": url.raw_path.split(b"?")[0],
        "query_string": url.query,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
        "server": (url.host, port),
        "client": ("127.0.0.1", 0),
    }


# ---------------------------------------------------------------------------- sync transport


class _SyncBody(http.SyncByteStream):  # type: ignore[misc, name-defined]
    def __init__(self, portal: BlockingPortal, exchange: _AppExchange, request: Any) -> None:
        self._portal = portal
        self._exchange = exchange
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        timeout = _read_timeout(self._request)
        while True:
            try:
                chunk = self._portal.call(self._exchange.next_chunk, timeout)
            except TimeoutError:
                raise http.ReadTimeout("in-process read timed out", request=self._request) from None
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        with contextlib.suppress(
            RuntimeError
        ):  # the app was already shut down: nothing is left to tell
            self._portal.call(self._exchange.close)


class SyncASGITransport(http.BaseTransport):  # type: ignore[misc, name-defined]
    """A sync transport that runs ``app`` in-process and streams its response chunk by chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.runner = AppRunner.for_app(app)

    def handle_request(self, request: Any) -> Any:
        body = request.read()
        portal = self.runner.portal
        handoff = _Handoff()
        try:
            exchange = portal.call(
                self.runner.open, _scope(request), body, _read_timeout(request), handoff
            )
        except TimeoutError:
            raise http.ReadTimeout("in-process read timed out", request=request) from None
        except BaseException:  # KeyboardInterrupt
            handoff.abandon(portal)
            raise
        return http.Response(
            exchange.status,
            headers=exchange.headers,
            stream=_SyncBody(portal, exchange, request),
            request=request,
        )


# ---------------------------------------------------------------------------- async transport


async def _on_runner(portal: BlockingPortal, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``fn(*args)`` running on the runner's loop, from the caller's loop."""
    future = portal.start_task_soon(fn, *args)
    if sniffio.current_async_library() == "asyncio":
        return await asyncio.wrap_future(future)
    return await anyio.to_thread.run_sync(future.result)


class _AsyncBody(http.AsyncByteStream):  # type: ignore[misc, name-defined]
    def __init__(self, portal: BlockingPortal, exchange: _AppExchange, request: Any) -> None:
        self._portal = portal
        self._exchange = exchange
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        timeout = _read_timeout(self._request)
        while True:
            try:
                chunk = await _on_runner(self._portal, self._exchange.next_chunk, timeout)
            except TimeoutError:
                raise http.ReadTimeout("in-process read timed out", request=self._request) from None
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(RuntimeError):  # the app was already shut down
                await _on_runner(self._portal, self._exchange.close)


class AsyncASGITransport(http.AsyncBaseTransport):  # type: ignore[misc, name-defined]
    """An async transport that runs ``app`` in-process and streams its response chunk by chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.runner = AppRunner.for_app(app)

    async def handle_async_request(self, request: Any) -> Any:
        body = await request.aread()
        # The first use starts the app's loop and lifespan, which blocks: do it off the caller's loop.
        portal = self.runner.started_portal()
        if portal is None:
            portal = await anyio.to_thread.run_sync(lambda: self.runner.portal)
        handoff = _Handoff()
        try:
            exchange = await _on_runner(
                portal, self.runner.open, _scope(request), body, _read_timeout(request), handoff
            )
        except TimeoutError:
            raise http.ReadTimeout("in-process read timed out", request=request) from None
        except BaseException:  # cancelled
            handoff.abandon(portal)
            raise
        return http.Response(
            exchange.status,
            headers=exchange.headers,
            stream=_AsyncBody(portal, exchange, request),
            request=request,
        )


# ---------------------------------------------------------------------------- the helper


def serve_in_process(engine_or_config: Any = None, *, config: Any = None) -> Any:
    """The agentrt app for in-process use: ``agentrt.OpenAI(app=agentrt.serve_in_process())``.

    ``engine_or_config`` is a running :class:`EngineClient` (used as it is), an
    ``EngineConfig`` (the embedded engine with it), a ``ServerConfig`` (the
    engine or router it describes), or None (the embedded default model).
    The engine is built when the app is first used, on the app's own loop,
    and closed at interpreter exit; ``config`` (a ``ServerConfig``) sets the
    server's limits and keys. The server logs its requests at debug level
    (``AGENTRT_LOG_LEVEL=debug`` shows them).
    """
    from agentrt.engine.config import EngineConfig
    from agentrt.protocol.engine import EngineClient
    from agentrt.serving.config import ServerConfig
    from agentrt.serving.engines import embedded, open_engine
    from agentrt.serving.http.app import create_app

    server = config or (
        engine_or_config if isinstance(engine_or_config, ServerConfig) else ServerConfig()
    )
    # The server's lines about each request are not the program's output.
    server = msgspec.structs.replace(server, request_log_level="debug")
    if isinstance(engine_or_config, EngineClient):
        return create_app(engine_or_config, server)
    if isinstance(engine_or_config, EngineConfig):
        engine_config = engine_or_config
        return create_app(lambda: embedded(engine_config), server)
    if engine_or_config is not None and not isinstance(engine_or_config, ServerConfig):
        raise TypeError(
            f"serve_in_process takes an EngineClient, EngineConfig or ServerConfig, not {type(engine_or_config).__name__}"
        )
    return create_app(lambda: open_engine(server), server)
