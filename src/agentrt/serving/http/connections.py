"""How ``agentrt serve`` bounds what one connection may hold: uvicorn's own limits, plus a head deadline.

uvicorn (h11) offers an idle timeout between requests (``timeout_keep_alive``),
a cap on connections and tasks beyond which new requests get a 503
(``limit_concurrency``), a cap on the bytes of a request head
(``h11_max_incomplete_event_size``) and the listen ``backlog``; they are
config values here. It has no deadline for a request head: a connection that
never sends a byte, or sends its headers a byte at a time, stays open for
ever, and enough of them exhaust the file descriptors. :func:`guarded_h11`
adds that one deadline (``header_timeout``) to uvicorn's h11 protocol; the
body's deadline (``body_timeout``) is the app's (:func:`~agentrt.serving.http.bodies.read_body`).
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from agentrt.log import get_logger
from agentrt.serving.config import ServerConfig

log = get_logger("agentrt.serving")

# File descriptors kept back from connections for everything else the server opens.
_RESERVED_FDS = 256


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` that carry the server's connection limits."""
    return {
        "http": guarded_h11(config.header_timeout),
        "timeout_keep_alive": config.timeout_keep_alive,
        "limit_concurrency": limit_concurrency(config),
        "h11_max_incomplete_event_size": config.h11_max_incomplete_event_size,
        "backlog": config.backlog,
    }


def limit_concurrency(config: ServerConfig) -> int:
    """``limit_concurrency``, or by default what the process's file-descriptor limit leaves room for."""
    if config.limit_concurrency is not None:
        return config.limit_concurrency
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(64, soft - _RESERVED_FDS)


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete in time.

    The clock starts when the connection opens, and on a kept-alive
    connection when the first byte of its next request arrives (the wait
    before that is ``timeout_keep_alive``'s); a complete head stops it.
    Bytes arriving do not restart it, so headers sent a byte at a time do
    not keep a connection open either.
    """

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_since_cycle: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            between_requests = self.cycle is None or self.cycle.response_complete
            if between_requests and self._head_timer is None:
                self._await_head()  # the first bytes of a kept-alive connection's next request
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._waiting_since_cycle:
                self._stop_head_timer()  # a new request's head was parsed

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._stop_head_timer()
            self._waiting_since_cycle = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.cycle is self._waiting_since_cycle and not self.transport.is_closing():
                log.info("request_head_timeout", client=self.client, seconds=header_timeout)
                self.transport.close()

    return GuardedH11Protocol
