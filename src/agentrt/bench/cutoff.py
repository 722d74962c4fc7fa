"""Stopping a timed-out run's synchronous programs: their calls end when the run is cut.

A run with a time limit cancels its asyncio programs, but programs written
with threads run in worker threads that cancellation cannot reach: they
would go on calling the server (and, once that server is stopped, a new one
that took its port), and the interpreter would wait for them at exit. A
:class:`Cutoff` is the synchronous client's HTTP transport: once
:meth:`Cutoff.cut`, it refuses every new request and shuts down the sockets
of the requests in flight, so a blocked read returns at once and each
worker thread's program fails on its next step.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Iterable
from typing import Any

try:  # the HTTP stack of the installed openai package (httpx2 in recent releases, else httpx)
    import httpcore2 as httpcore
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older openai releases
    import httpcore  # type: ignore[no-redef]
    import httpx  # type: ignore[no-redef]


class RunCut(httpx.ConnectError):
    """The run's time limit passed: no more calls are sent (a transport error to the client)."""


class _Sockets(httpcore.NetworkBackend):
    """Opens connections as the default backend does and remembers their sockets."""

    def __init__(self, cutoff: Cutoff) -> None:
        self._backend = httpcore.SyncBackend()
        self._cutoff = cutoff

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        self._cutoff.track(stream.get_extra_info("socket"))
        return stream

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> Any:
        stream = self._backend.connect_unix_socket(path, timeout, socket_options)
        self._cutoff.track(stream.get_extra_info("socket"))
        return stream

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class Cutoff(httpx.BaseTransport):
    """An HTTP transport for the run's synchronous client that the run can cut off."""

    def __init__(self, max_connections: int = 1024) -> None:
        self._lock = threading.Lock()
        self._cut = False
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
        )
        # The transport's pool, opened over a backend that keeps the sockets it connects.
        self._transport._pool = httpcore.ConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=64,
            network_backend=_Sockets(self),
        )

    @property
    def is_cut(self) -> bool:
        return self._cut

    def track(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.add(sock)
            cut = self._cut
        if cut:  # connected while the run was being cut
            _shut(sock)

    def cut(self) -> None:
        """Refuse every request from now on and end the ones in flight."""
        with self._lock:
            self._cut = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def handle_request(self, request: Any) -> Any:
        if self._cut:
            raise RunCut("the run's time limit has passed", request=request)
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


def _shut(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock`` (a read returns end of stream); closing is left to its owner."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
