"""Load shedding at the server: a bounded number of requests in the engine, a bounded queue before it.

A request takes a slot for as long as its calls run. When every slot is
taken it waits in a bounded queue for at most ``queue_timeout`` seconds;
when the queue is full, or the wait times out, it gets a 429 with
``Retry-After`` instead of hanging. The engine's own scheduler orders the
calls that hold slots; this only protects the server from unbounded load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from agentrt.serving.http.errors import overloaded


class RequestLimiter:
    def __init__(
        self, max_concurrent: int, max_queued: int, queue_timeout: float, retry_after: float
    ) -> None:
        if max_concurrent < 1 or max_queued < 0 or queue_timeout < 0:
            raise ValueError("max_concurrent must be >= 1, max_queued and queue_timeout >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self.retry_after = retry_after
        self.running = 0
        self.queued = 0
        self._freed: anyio.Event | None = None  # set when a slot frees; created on the serving loop

    @asynccontextmanager
    async def slot(self, calls: int = 1) -> AsyncIterator[None]:
        """Hold ``calls`` slots for the body of the ``async with``; raise a 429 :class:`APIError` if they do not come.

        A request takes one slot per engine call it makes (a batch of prompts
        is several), at most every slot there is.
        """
        calls = max(1, min(calls, self.max_concurrent))
        if self.running + calls > self.max_concurrent:
            await self._wait_for_slot(calls)
        self.running += calls
        try:
            yield
        finally:
            self.running -= calls
            if self._freed is not None:
                self._freed.set()
                self._freed = None

    async def _wait_for_slot(self, calls: int) -> None:
        if self.queued >= self.max_queued:
            raise overloaded(
                f"server overloaded: {self.running} requests running and {self.queued} queued",
                self.retry_after,
            )
        self.queued += 1
        try:
            with anyio.move_on_after(self.queue_timeout) as scope:
                while self.running + calls > self.max_concurrent:
                    if self._freed is None:
                        self._freed = anyio.Event()
                    await self._freed.wait()
            if scope.cancelled_caught:
                raise overloaded(
                    f"server overloaded: no slot freed within {self.queue_timeout:g} s",
                    self.retry_after,
                )
        finally:
            self.queued -= 1


class TenantLimiter:
    """The server's :class:`RequestLimiter` behind one per tenant, so one tenant's flood
    queues (and is refused) against its own share before it can take every slot."""

    def __init__(self, server: RequestLimiter, share: Callable[[str], tuple[int, int]]) -> None:
        self.server = server
        self.share = share  # tenant -> (max concurrent, max queued)
        self.tenants: dict[str, RequestLimiter] = {}

    @property
    def running(self) -> int:
        return self.server.running

    @property
    def queued(self) -> int:
        return self.server.queued + sum(t.queued for t in self.tenants.values())

    def of(self, tenant: str) -> RequestLimiter:
        limiter = self.tenants.get(tenant)
        if limiter is None:
            concurrent, queued = self.share(tenant)
            limiter = RequestLimiter(
                concurrent, queued, self.server.queue_timeout, self.server.retry_after
            )
            self.tenants[tenant] = limiter
        return limiter

    @asynccontextmanager
    async def slot(self, tenant: str, calls: int = 1) -> AsyncIterator[None]:
        """Hold ``calls`` slots of the tenant's share and of the server's; 429 if either is full."""
        async with self.of(tenant).slot(calls), self.server.slot(calls):
            yield
