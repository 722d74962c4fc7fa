"""Waiting for a condition that another task or process makes true, without timing assertions."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def eventually(
    condition: Callable[[], object], *, within: float = 10.0, interval: float = 0.01
) -> None:
    """Return once ``condition()`` is truthy; fail the test (TimeoutError) if it stays false ``within`` seconds."""
    with anyio.fail_after(within):
        for _ in iter(int, 1):  # until the condition holds or the deadline cancels us
            if condition():
                return
            await anyio.sleep(interval)
